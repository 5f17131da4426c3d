output "ledger_table_name" {
  description = "The ledger (partition key serviceArn, sort key deploymentId)."
  value       = aws_dynamodb_table.ledger.name
}

output "function_arns" {
  description = "Function ARN by crate: post-test-traffic, production-shift, post-shift, reconciler."
  value       = { for crate, fn in aws_lambda_function.function : crate => fn.arn }
}

output "hook_invoke_role_arn" {
  description = "role_arn for the three lifecycle hooks."
  value       = aws_iam_role.hook_invoke.arn
}

output "hook_timeout_minutes" {
  description = "The hook timeout that fits skew_window (for lifecycle_hook.timeout_configuration where your provider version has it)."
  value       = local.hook_timeout_minutes[var.skew_window]
}

output "sweep_queue_url" {
  description = "The sweep queue (one message per service and scheduled sweep)."
  value       = aws_sqs_queue.sweep.url
}

output "sweep_dead_letter_queue_arn" {
  description = "Sweep messages whose service failed every receive."
  value       = aws_sqs_queue.sweep_dead_letters.arn
}

output "reconciler_dead_letter_queue_arn" {
  description = "Reconciler events that failed every retry."
  value       = aws_sqs_queue.reconciler_dead_letters.arn
}

output "lifecycle_hooks" {
  description = "One object per hook, in the shape of aws_ecs_service deployment_configuration { lifecycle_hook { ... } }: use with a dynamic \"lifecycle_hook\" block. All three carry the same hook_details."
  value = [
    for crate, stages in local.hooks : {
      hook_target_arn  = aws_lambda_function.function[crate].arn
      role_arn         = aws_iam_role.hook_invoke.arn
      lifecycle_stages = stages
      hook_details     = jsonencode({ skewWindow = var.skew_window })
    }
  ]
}

output "dashboard_name" {
  description = "The CloudWatch dashboard of skewguard's metrics."
  value       = aws_cloudwatch_dashboard.skewguard.dashboard_name
}
