# The reconciler's triggers: the end of every ECS deployment, a schedule that fills the sweep
# queue, and the sweep queue itself; the dead-letter queues and an alarm on each.

resource "aws_lambda_function_event_invoke_config" "reconciler" {
  function_name                = aws_lambda_function.function["reconciler"].function_name
  maximum_retry_attempts       = 2
  maximum_event_age_in_seconds = 3600
}

resource "aws_cloudwatch_event_rule" "deployment_finished" {
  name        = "${var.name}-deployment-finished"
  description = "skewguard: reconcile a service when its ECS deployment completes or fails"
  event_pattern = jsonencode({
    source        = ["aws.ecs"]
    "detail-type" = ["ECS Deployment State Change"]
    # Only the services of cluster_name, the same scope as the roles' ECS calls.
    resources = [{ wildcard = "${local.ecs_prefix}:service/${var.cluster_name}/*" }]
    detail = {
      eventName = ["SERVICE_DEPLOYMENT_COMPLETED", "SERVICE_DEPLOYMENT_FAILED"]
    }
  })
  tags = var.tags
}

resource "aws_cloudwatch_event_target" "deployment_finished" {
  rule = aws_cloudwatch_event_rule.deployment_finished.name
  arn  = aws_lambda_function.function["reconciler"].arn

  retry_policy {
    maximum_retry_attempts       = 4
    maximum_event_age_in_seconds = 3600
  }
}

resource "aws_cloudwatch_event_rule" "periodic" {
  name                = "${var.name}-periodic"
  description         = "skewguard periodic reconciliation"
  schedule_expression = var.reconcile_schedule
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "periodic" {
  rule = aws_cloudwatch_event_rule.periodic.name
  arn  = aws_lambda_function.function["reconciler"].arn
}

resource "aws_lambda_permission" "reconciler" {
  for_each = {
    deployment-finished = aws_cloudwatch_event_rule.deployment_finished.arn
    periodic            = aws_cloudwatch_event_rule.periodic.arn
  }

  statement_id  = "AllowEventBridge-${each.key}"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.function["reconciler"].function_name
  principal     = "events.amazonaws.com"
  source_arn    = each.value
}

resource "aws_sqs_queue" "reconciler_dead_letters" {
  name                      = "${var.name}-reconciler-dead-letters"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

resource "aws_cloudwatch_metric_alarm" "reconciler_dead_letters" {
  alarm_name          = "${var.name}-reconciler-dead-letters"
  alarm_description   = "A reconciler invocation failed every retry: its event is in the dead-letter queue (the service was not repaired; the next scheduled run retries it)."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.reconciler_dead_letters.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  tags                = var.tags
}

# One message per service and sweep ({"serviceArn": ...}). A message whose service failed three
# receives in a row moves to the sweep's dead-letter queue; later sweeps enqueue the service
# again meanwhile.
resource "aws_sqs_queue" "sweep" {
  name                    = "${var.name}-sweep"
  sqs_managed_sse_enabled = true
  # Six times the reconciler's timeout (300 s), as AWS recommends for a function's queue.
  visibility_timeout_seconds = 1800
  # Longer than three receives (3 x 1800 s), so a failing message reaches the dead-letter queue
  # instead of expiring.
  message_retention_seconds = 86400
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.sweep_dead_letters.arn
    maxReceiveCount     = 3
  })
  tags = var.tags
}

resource "aws_sqs_queue" "sweep_dead_letters" {
  name                      = "${var.name}-sweep-dead-letters"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

# Each invocation reconciles up to 10 services and answers the ones that failed
# (batchItemFailures), so only those are retried; at most sweep_concurrency at once.
resource "aws_lambda_event_source_mapping" "sweep" {
  event_source_arn        = aws_sqs_queue.sweep.arn
  function_name           = aws_lambda_function.function["reconciler"].arn
  batch_size              = 10
  function_response_types = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = var.sweep_concurrency
  }

  # The mapping polls with the function's role: its grants first.
  depends_on = [aws_iam_role_policy.function]
}

resource "aws_cloudwatch_metric_alarm" "sweep_dead_letters" {
  alarm_name          = "${var.name}-sweep-dead-letters"
  alarm_description   = "A service failed to reconcile three sweeps' receives in a row: its message is in the sweep's dead-letter queue. The reconciler's \"reconciling failed\" log lines name the service and the error_kind; redrive the messages to the sweep queue once fixed."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.sweep_dead_letters.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  tags                = var.tags
}
