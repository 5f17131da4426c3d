# One role per function with only the calls that function makes, and the role ECS assumes to
# invoke the hooks: the statements of infra/template.yaml, statement for statement.

locals {
  arn_prefix = "arn:${data.aws_partition.current.partition}"
  ecs_prefix = "${local.arn_prefix}:ecs:${data.aws_region.current.region}:${data.aws_caller_identity.current.account_id}"
  elb_prefix = "${local.arn_prefix}:elasticloadbalancing:${data.aws_region.current.region}:${data.aws_caller_identity.current.account_id}"
  # listener/app/<lb>/<lb-id>/<listener-id> -> listener-rule/app/<lb>/<lb-id>/<listener-id>/*
  listener_rule_arns = [for arn in var.listener_arns : "${replace(arn, ":listener/", ":listener-rule/")}/*"]

  # Each function's own policy (besides the three shared ones every function role holds).
  function_policies = {
    "post-test-traffic" = data.aws_iam_policy_document.post_test_traffic.json
    "production-shift"  = data.aws_iam_policy_document.production_shift.json
    "post-shift"        = data.aws_iam_policy_document.post_shift.json
    "reconciler"        = data.aws_iam_policy_document.reconciler.json
  }
}

data "aws_iam_policy_document" "lambda_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  for_each = local.functions

  name               = "${var.name}-${each.key}"
  description        = "skewguard ${each.key}"
  assume_role_policy = data.aws_iam_policy_document.lambda_trust.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "function" {
  for_each = local.functions

  name   = each.key
  role   = aws_iam_role.function[each.key].id
  policy = local.function_policies[each.key]
}

# ------------------------------------------------------------------------------ shared policies

# Reading a service revision and its task definition (every function discovers versions).
data "aws_iam_policy_document" "describe_revisions" {
  # The Service Authorization Reference requires both resource types: the service and its
  # revisions.
  statement {
    sid     = "DescribeServiceRevisions"
    actions = ["ecs:DescribeServiceRevisions"]
    resources = [
      "${local.ecs_prefix}:service/${var.cluster_name}/*",
      "${local.ecs_prefix}:service-revision/${var.cluster_name}/*",
    ]
  }
  statement {
    sid       = "DescribeTaskDefinitionHasNoResourceLevelPermissions"
    actions   = ["ecs:DescribeTaskDefinition"]
    resources = ["*"]
  }
}

# Pin rules: read the listener, create tagged rules on the given listeners, delete them.
data "aws_iam_policy_document" "pin_rules" {
  statement {
    sid       = "DescribeHasNoResourceLevelPermissions"
    actions   = ["elasticloadbalancing:DescribeRules", "elasticloadbalancing:DescribeTags"]
    resources = ["*"]
  }
  statement {
    sid       = "CreatePinRulesOnTheseListenersOnlyAndOnlyTagged"
    actions   = ["elasticloadbalancing:CreateRule"]
    resources = var.listener_arns
    condition {
      test     = "Null"
      variable = "aws:RequestTag/skewguard:service"
      values   = ["false"]
    }
    condition {
      test     = "Null"
      variable = "aws:RequestTag/skewguard:deployment-id"
      values   = ["false"]
    }
  }
  statement {
    sid       = "TagPinRulesOnlyWhileCreatingThem"
    actions   = ["elasticloadbalancing:AddTags"]
    resources = local.listener_rule_arns
    condition {
      test     = "StringEquals"
      variable = "elasticloadbalancing:CreateAction"
      values   = ["CreateRule"]
    }
  }
  statement {
    sid       = "DeletePinRulesOfTheseListeners"
    actions   = ["elasticloadbalancing:DeleteRule"]
    resources = local.listener_rule_arns
    dynamic "condition" {
      for_each = var.restrict_deletes_to_skewguard_rules ? [1] : []
      content {
        test     = "Null"
        variable = "aws:ResourceTag/skewguard:service"
        values   = ["false"]
      }
    }
  }
}

# The ledger: conditional writes (TransactWriteItems is authorised per item as UpdateItem,
# PutItem or DeleteItem: entries in play, history items and archives, the services directory).
data "aws_iam_policy_document" "ledger_write" {
  statement {
    sid       = "LedgerTableOnly"
    actions   = ["dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:PutItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.ledger.arn]
  }
}

# Retention copies (retention service mode, started by post-shift): read the load balancer for
# the quota check and the copy's targets' health; create the copy's target group (named sg-*)
# and service (named <service>-sg-<deployment ID>, in the cluster) only carrying
# skewguard:managed=true, and tag them only while creating them. No iam:PassRole: the copy
# sets no `role` (ECS uses its service-linked role) and reuses the task definition's roles.
data "aws_iam_policy_document" "retention_start" {
  statement {
    sid       = "DescribeListenersAndTargetHealthHaveNoResourceLevelPermissions"
    actions   = ["elasticloadbalancing:DescribeListeners", "elasticloadbalancing:DescribeTargetHealth"]
    resources = ["*"]
  }
  statement {
    sid       = "CreateOnlyTaggedRetentionTargetGroups"
    actions   = ["elasticloadbalancing:CreateTargetGroup"]
    resources = ["${local.elb_prefix}:targetgroup/sg-*/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/skewguard:managed"
      values   = ["true"]
    }
  }
  statement {
    sid       = "TagRetentionTargetGroupsOnlyWhileCreatingThem"
    actions   = ["elasticloadbalancing:AddTags"]
    resources = ["${local.elb_prefix}:targetgroup/sg-*/*"]
    condition {
      test     = "StringEquals"
      variable = "elasticloadbalancing:CreateAction"
      values   = ["CreateTargetGroup"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/skewguard:managed"
      values   = ["true"]
    }
  }
  statement {
    sid       = "CreateOnlyTaggedRetentionServices"
    actions   = ["ecs:CreateService"]
    resources = ["${local.ecs_prefix}:service/${var.cluster_name}/*-sg-*"]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/skewguard:managed"
      values   = ["true"]
    }
  }
  statement {
    sid       = "TagRetentionServicesOnlyWhileCreatingThem"
    actions   = ["ecs:TagResource"]
    resources = ["${local.ecs_prefix}:service/${var.cluster_name}/*-sg-*"]
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["CreateService"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/skewguard:managed"
      values   = ["true"]
    }
  }
}

# Retention copies: scale to 0 and delete the retention services and target groups skewguard
# created (only those tagged skewguard:managed=true), and look whether one is already gone.
data "aws_iam_policy_document" "retention_teardown" {
  statement {
    sid       = "ScaleDownAndDeleteOnlyTaggedServices"
    actions   = ["ecs:UpdateService", "ecs:DeleteService"]
    resources = ["${local.ecs_prefix}:service/${var.cluster_name}/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/skewguard:managed"
      values   = ["true"]
    }
  }
  statement {
    sid       = "DescribeServicesOfTheCluster"
    actions   = ["ecs:DescribeServices"]
    resources = ["${local.ecs_prefix}:service/${var.cluster_name}/*"]
  }
  statement {
    sid       = "DeleteOnlyTaggedRetentionTargetGroups"
    actions   = ["elasticloadbalancing:DeleteTargetGroup"]
    resources = ["${local.elb_prefix}:targetgroup/sg-*/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/skewguard:managed"
      values   = ["true"]
    }
  }
  statement {
    sid       = "DescribeTargetGroupsHasNoResourceLevelPermissions"
    actions   = ["elasticloadbalancing:DescribeTargetGroups"]
    resources = ["*"]
  }
}

resource "aws_iam_policy" "describe_revisions" {
  name        = "${var.name}-describe-revisions"
  description = "skewguard - read ECS service revisions and task definitions"
  policy      = data.aws_iam_policy_document.describe_revisions.json
  tags        = var.tags
}

resource "aws_iam_policy" "pin_rules" {
  name        = "${var.name}-pin-rules"
  description = "skewguard - manage its pin rules on the given ALB listeners"
  policy      = data.aws_iam_policy_document.pin_rules.json
  tags        = var.tags
}

resource "aws_iam_policy" "ledger_write" {
  name        = "${var.name}-ledger-write"
  description = "skewguard - read and conditionally update the ledger table"
  policy      = data.aws_iam_policy_document.ledger_write.json
  tags        = var.tags
}

resource "aws_iam_policy" "retention_start" {
  name        = "${var.name}-retention-start"
  description = "skewguard - create the retention copies of retention service mode"
  policy      = data.aws_iam_policy_document.retention_start.json
  tags        = var.tags
}

resource "aws_iam_policy" "retention_teardown" {
  name        = "${var.name}-retention-teardown"
  description = "skewguard - tear down the retention copies it created"
  policy      = data.aws_iam_policy_document.retention_teardown.json
  tags        = var.tags
}

# Only post-shift starts retention copies; post-shift (a copy not healthy in time) and the
# reconciler (retirement) tear them down.
resource "aws_iam_role_policy_attachment" "retention_start" {
  role       = aws_iam_role.function["post-shift"].name
  policy_arn = aws_iam_policy.retention_start.arn
}

resource "aws_iam_role_policy_attachment" "retention_teardown_post_shift" {
  role       = aws_iam_role.function["post-shift"].name
  policy_arn = aws_iam_policy.retention_teardown.arn
}

resource "aws_iam_role_policy_attachment" "retention_teardown_reconciler" {
  role       = aws_iam_role.function["reconciler"].name
  policy_arn = aws_iam_policy.retention_teardown.arn
}

resource "aws_iam_role_policy_attachment" "describe_revisions" {
  for_each = aws_iam_role.function

  role       = each.value.name
  policy_arn = aws_iam_policy.describe_revisions.arn
}

resource "aws_iam_role_policy_attachment" "pin_rules" {
  for_each = aws_iam_role.function

  role       = each.value.name
  policy_arn = aws_iam_policy.pin_rules.arn
}

resource "aws_iam_role_policy_attachment" "ledger_write" {
  for_each = aws_iam_role.function

  role       = each.value.name
  policy_arn = aws_iam_policy.ledger_write.arn
}

# ------------------------------------------------------------------------------ own policies

data "aws_iam_policy_document" "post_test_traffic" {
  statement {
    sid       = "OwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function["post-test-traffic"].arn}:*"]
  }
  # On a service's first deployment under skewguard, blue is the deployment's source revision.
  statement {
    sid     = "DescribeServiceDeployments"
    actions = ["ecs:DescribeServiceDeployments"]
    resources = [
      "${local.ecs_prefix}:service/${var.cluster_name}/*",
      "${local.ecs_prefix}:service-deployment/${var.cluster_name}/*",
    ]
  }
}

data "aws_iam_policy_document" "production_shift" {
  statement {
    sid       = "OwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function["production-shift"].arn}:*"]
  }
}

data "aws_iam_policy_document" "post_shift" {
  statement {
    sid       = "OwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function["post-shift"].arn}:*"]
  }
}

# The hooks' calls plus ListServiceDeployments, DescribeServiceDeployments and a Scan for every
# service in the ledger; its dead-letter queue; and the sweep queue (SendMessage on a schedule;
# its event source mapping receives and deletes with this role). Retirement of retained versions
# through the retention_teardown policy.
data "aws_iam_policy_document" "reconciler" {
  statement {
    sid       = "OwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function["reconciler"].arn}:*"]
  }
  # The idle check of retained versions: the ALB's RequestCount per target group.
  statement {
    sid       = "GetMetricDataHasNoResourceLevelPermissions"
    actions   = ["cloudwatch:GetMetricData"]
    resources = ["*"]
  }
  statement {
    sid       = "ListServiceDeployments"
    actions   = ["ecs:ListServiceDeployments"]
    resources = ["${local.ecs_prefix}:service/${var.cluster_name}/*"]
  }
  statement {
    sid     = "DescribeServiceDeployments"
    actions = ["ecs:DescribeServiceDeployments"]
    resources = [
      "${local.ecs_prefix}:service/${var.cluster_name}/*",
      "${local.ecs_prefix}:service-deployment/${var.cluster_name}/*",
    ]
  }
  statement {
    sid       = "EveryServiceInTheLedger"
    actions   = ["dynamodb:Scan"]
    resources = [aws_dynamodb_table.ledger.arn]
  }
  statement {
    sid       = "FailedEventsToTheDeadLetterQueue"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.reconciler_dead_letters.arn]
  }
  statement {
    sid       = "EnqueueTheSweep"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.sweep.arn]
  }
  statement {
    sid       = "WorkTheSweepQueue"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.sweep.arn]
  }
}

# ------------------------------------------------------------------------------ the role ECS assumes

resource "aws_iam_role" "hook_invoke" {
  name        = "${var.name}-hook-invoke"
  description = "Assumed by Amazon ECS to invoke the skewguard lifecycle hooks"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = var.tags
}

data "aws_iam_policy_document" "hook_invoke" {
  statement {
    sid     = "TheThreeHooksOnly"
    actions = ["lambda:InvokeFunction"]
    resources = [
      aws_lambda_function.function["post-test-traffic"].arn,
      aws_lambda_function.function["production-shift"].arn,
      aws_lambda_function.function["post-shift"].arn,
    ]
  }
}

resource "aws_iam_role_policy" "hook_invoke" {
  name   = "invoke-skewguard-hooks"
  role   = aws_iam_role.hook_invoke.id
  policy = data.aws_iam_policy_document.hook_invoke.json
}
