# The dashboard and alarms of infra/template.yaml (README.md, "Metrics, dashboard and alarms").
# The functions write their metrics as CloudWatch embedded metric format lines in their logs
# (namespace skewguard): nothing to create for the metrics themselves.

locals {
  region = data.aws_region.current.region
  # The load balancer of the first listener, whose target groups' request rates are shown.
  load_balancer_name = split("/", split(":listener/", var.listener_arns[0])[1])[1]
  alarm_actions      = var.alarm_topic_arn == "" ? [] : [var.alarm_topic_arn]

  widget = {
    "Hook invocations by stage"      = { x = 0, y = 0, stat = "Sum", stacked = true, search = ["SEARCH('{skewguard,Function,Stage} MetricName=\"Invocations\"', 'Sum', 300)"] }
    "Hook answers"                   = { x = 12, y = 0, stat = "Sum", stacked = true, search = ["SEARCH('{skewguard,Function} MetricName=(\"Succeeded\" OR \"InProgress\" OR \"Failed\")', 'Sum', 300)"] }
    "Hold time by service (seconds)" = { x = 0, y = 6, stat = "Maximum", stacked = false, search = ["SEARCH('{skewguard,Service} MetricName=\"HoldTime\"', 'Maximum', 300)"] }
    "Errors by kind"                 = { x = 12, y = 6, stat = "Sum", stacked = true, search = ["SEARCH('{skewguard,Function,ErrorKind} MetricName=\"Errors\"', 'Sum', 300)"] }
    "Reconciler repairs by kind"     = { x = 0, y = 12, stat = "Sum", stacked = true, search = ["SEARCH('{skewguard,Function,RepairKind} MetricName=\"Repairs\"', 'Sum', 300)"] }
    "Pins created and removed"       = { x = 12, y = 12, stat = "Sum", stacked = false, search = ["SEARCH('{skewguard,Function} MetricName=(\"PinsCreated\" OR \"PinsRemoved\")', 'Sum', 300)"] }
    "Duration (ms, maximum) and AWS calls per invocation (average)" = { x = 0, y = 18, stat = "Maximum", stacked = false, search = [
      "SEARCH('{skewguard,Function} MetricName=\"Duration\"', 'Maximum', 300)",
      "SEARCH('{skewguard,Function} MetricName=\"AwsCalls\"', 'Average', 300)",
    ] }
    "Requests per target group (load balancer ${local.load_balancer_name})" = { x = 12, y = 18, stat = "Sum", stacked = false, search = [
      "SEARCH('{AWS/ApplicationELB,LoadBalancer,TargetGroup} MetricName=\"RequestCount\" ${local.load_balancer_name}', 'Sum', 60)",
    ] }
  }
}

resource "aws_cloudwatch_dashboard" "skewguard" {
  dashboard_name = "${var.name}-skewguard"
  dashboard_body = jsonencode({
    widgets = [for title, w in local.widget : {
      type = "metric", x = w.x, y = w.y, width = 12, height = 6
      properties = {
        title   = title, region = local.region, view = "timeSeries", stacked = w.stacked, stat = w.stat
        period  = 300
        metrics = [for i, expression in w.search : [{ expression = expression, id = "e${i}", yAxis = i == 0 ? "left" : "right" }]]
      }
    }]
  })
}

resource "aws_cloudwatch_metric_alarm" "hook_failed" {
  count               = var.alarm_on_hook_failed ? 1 : 0
  alarm_name          = "${var.name}-hook-failed"
  alarm_description   = "A skewguard hook answered FAILED: ECS rolls that deployment back. The hook's log line \"hook failed\" names the service, the stage and the error_kind."
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags

  metric_query {
    id          = "failed"
    expression  = "SUM([posttest, shift, postshift])"
    label       = "FAILED answers"
    return_data = true
  }

  dynamic "metric_query" {
    for_each = { posttest = "post-test-traffic", shift = "production-shift", postshift = "post-shift" }
    content {
      id          = metric_query.key
      return_data = false
      metric {
        namespace   = "skewguard"
        metric_name = "Failed"
        dimensions  = { Function = metric_query.value }
        period      = 60
        stat        = "Sum"
      }
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "drift_repaired" {
  count               = var.alarm_on_drift_repaired ? 1 : 0
  alarm_name          = "${var.name}-drift-repaired"
  alarm_description   = "The skewguard reconciler repaired drift between the ledger, the listener and ECS. Its \"repaired\" log lines say what and why (kind, deployment_id, rule_arn, detail)."
  namespace           = "skewguard"
  metric_name         = "Repairs"
  dimensions          = { Function = "reconciler" }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

resource "aws_cloudwatch_metric_alarm" "pin_removed_by_reconciler" {
  count               = var.alarm_on_pin_removed_by_reconciler ? 1 : 0
  alarm_name          = "${var.name}-pin-removed-by-reconciler"
  alarm_description   = "The skewguard reconciler removed a pin rule the hooks had left on the listener (its version no longer runs, or it pointed elsewhere). Its \"repaired\" log line with kind pin-removed names the rule and why."
  namespace           = "skewguard"
  metric_name         = "Repairs"
  dimensions          = { Function = "reconciler", RepairKind = "pin-removed" }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}
