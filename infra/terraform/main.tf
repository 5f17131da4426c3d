# skewguard: the ledger table, the three lifecycle hooks and the reconciler, their roles and log
# groups, the role ECS assumes to invoke the hooks, and the reconciler's triggers. The same
# resources and the same IAM statements as infra/template.yaml (infra/check-iac compares them).

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  # crate => what differs between the functions
  functions = {
    "post-test-traffic" = { timeout = 120, description = "skewguard hook at RECONCILE_SERVICE, PRE_SCALE_UP and POST_TEST_TRAFFIC_SHIFT - unpins what a new green replaces, records green, pins the production version" }
    "production-shift"  = { timeout = 120, description = "skewguard hook at TEST_TRAFFIC_SHIFT and PRODUCTION_TRAFFIC_SHIFT - pins green, unpins it on rollback" }
    "post-shift"        = { timeout = 120, description = "skewguard hook at POST_PRODUCTION_TRAFFIC_SHIFT - holds the previous version pinned for the skew window" }
    # The sweep queue's visibility timeout is six times this timeout (reconciler.tf).
    "reconciler" = { timeout = 300, description = "skewguard reconciler - repairs pins and the ledger after deployments end, and periodically through the sweep queue" }
  }
  hooks = {
    "post-test-traffic" = ["RECONCILE_SERVICE", "PRE_SCALE_UP", "POST_TEST_TRAFFIC_SHIFT"]
    "production-shift"  = ["TEST_TRAFFIC_SHIFT", "PRODUCTION_TRAFFIC_SHIFT"]
    "post-shift"        = ["POST_PRODUCTION_TRAFFIC_SHIFT"]
  }

  # For each skew window, the hook timeout (minutes) to register: the window plus a margin for
  # pollInterval and slow calls (the SkewWindows mapping of infra/template.yaml).
  hook_timeout_minutes = {
    "15m" = 60, "30m" = 90, "1h" = 120, "2h" = 180, "4h" = 300, "8h" = 600, "12h" = 840, "23h" = 1440
  }

  zips = {
    for crate in keys(local.functions) : crate => (
      contains(keys(var.lambda_zips), crate) ? var.lambda_zips[crate] : data.archive_file.bootstrap[crate].output_path
    )
  }
}

# ------------------------------------------------------------------------------ the ledger

resource "aws_dynamodb_table" "ledger" {
  #checkov:skip=CKV_AWS_119:the AWS managed key, as in the SAM template: no key policy or KMS grant to manage; the ledger holds ARNs and deployment IDs
  name                        = "${var.name}-ledger"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "serviceArn"
  range_key                   = "deploymentId"
  deletion_protection_enabled = true

  attribute {
    name = "serviceArn"
    type = "S"
  }
  attribute {
    name = "deploymentId"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  ttl {
    attribute_name = "expiresAt"
    enabled        = true
  }

  # The AWS managed key (aws/dynamodb), as in the SAM template: no KMS permissions needed.
  server_side_encryption {
    enabled = true
  }

  tags = var.tags

  # The ledger outlives the functions (DeletionPolicy: Retain in the SAM template).
  lifecycle {
    prevent_destroy = true
  }
}

# ------------------------------------------------------------------------------ the functions

data "archive_file" "bootstrap" {
  for_each = { for crate in keys(local.functions) : crate => crate if !contains(keys(var.lambda_zips), crate) }

  type        = "zip"
  source_file = "${var.lambda_build_dir}/${each.key}/bootstrap"
  output_path = "${path.root}/.terraform/skewguard/${each.key}.zip"
}

resource "aws_cloudwatch_log_group" "function" {
  #checkov:skip=CKV_AWS_158:operational logs without secrets, encrypted at rest by CloudWatch Logs; a CMK would need a key policy per account
  #checkov:skip=CKV_AWS_338:retention is log_retention_in_days (30 days by default), as in the SAM template
  for_each = local.functions

  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_in_days
  tags              = var.tags
}

resource "aws_lambda_function" "function" {
  #checkov:skip=CKV_AWS_117:calls only AWS APIs, no VPC resources: a VPC would add NAT or endpoints and nothing else
  #checkov:skip=CKV_AWS_115:ECS invokes the hooks a few times per deployment; reserved concurrency would take from the account pool, and a throttled hook fails a deployment
  #checkov:skip=CKV_AWS_272:code signing needs a Signer profile of the user's account; the bootstrap comes from the user's own cargo-lambda build
  #checkov:skip=CKV_AWS_173:the environment holds a table name and a duration, no secret
  #checkov:skip=CKV_AWS_50:structured JSON logs; X-Ray would need xray:Put* grants beyond the template's least privilege
  for_each = local.functions

  function_name    = "${var.name}-${each.key}"
  description      = each.value.description
  role             = aws_iam_role.function[each.key].arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.architecture]
  memory_size      = 256
  timeout          = each.value.timeout
  filename         = local.zips[each.key]
  source_code_hash = filebase64sha256(local.zips[each.key])

  environment {
    variables = merge(
      {
        SKEWGUARD_TABLE       = aws_dynamodb_table.ledger.name
        SKEWGUARD_SKEW_WINDOW = var.skew_window
      },
      each.key == "reconciler" ? { SKEWGUARD_SWEEP_QUEUE_URL = aws_sqs_queue.sweep.url } : {},
    )
  }

  logging_config {
    log_format            = "JSON"
    log_group             = aws_cloudwatch_log_group.function[each.key].name
    application_log_level = var.log_level
  }

  # The reconciler is invoked asynchronously (EventBridge): an event that fails every retry
  # lands in its dead-letter queue instead of vanishing.
  dynamic "dead_letter_config" {
    for_each = each.key == "reconciler" ? [aws_sqs_queue.reconciler_dead_letters.arn] : []
    content {
      target_arn = dead_letter_config.value
    }
  }

  tags = var.tags
}
