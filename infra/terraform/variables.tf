# The parameters of infra/template.yaml, under Terraform names.

variable "name" {
  description = "Prefix of every name (functions, roles, log groups, rules), like the SAM stack name."
  type        = string
  default     = "skewguard"

  validation {
    condition     = can(regex("^[A-Za-z0-9-]{1,40}$", var.name))
    error_message = "name: 1-40 letters, digits or '-' (it prefixes function and role names)."
  }
}

variable "listener_arns" {
  description = "ARNs of the ALB listeners that carry the services' production rules (pins are created on these listeners only). Wildcards may stand for IDs not known yet: arn:aws:elasticloadbalancing:REGION:ACCOUNT:listener/app/my-alb/*/*"
  type        = list(string)

  validation {
    condition     = length(var.listener_arns) > 0 && alltrue([for arn in var.listener_arns : strcontains(arn, ":listener/")])
    error_message = "listener_arns: give at least one listener ARN (…:listener/app/LB/LB-ID/LISTENER-ID)."
  }
}

variable "cluster_name" {
  description = "ECS cluster whose services use skewguard: a name, or a pattern where * stands for any characters (shop-* for several clusters; * for every cluster of the account and Region). Scopes the ECS calls and the reconciler's deployment events."
  type        = string

  validation {
    # No "**": EventBridge rejects consecutive wildcards.
    condition     = can(regex("^[A-Za-z0-9_*-]{1,255}$", var.cluster_name)) && !strcontains(var.cluster_name, "**")
    error_message = "cluster_name: a cluster name, or a pattern with single * wildcards."
  }
}

variable "restrict_deletes_to_skewguard_rules" {
  description = "Allow DeleteRule only on rules tagged skewguard:service (IAM condition aws:ResourceTag)."
  type        = bool
  default     = true
}

variable "architecture" {
  description = "Lambda architecture; must match the build (cargo lambda build --release --arm64 for arm64)."
  type        = string
  default     = "arm64"

  validation {
    condition     = contains(["arm64", "x86_64"], var.architecture)
    error_message = "architecture: arm64 or x86_64."
  }
}

variable "skew_window" {
  description = "Function-level default skewWindow (SKEWGUARD_SKEW_WINDOW), also the window in the lifecycle_hooks output."
  type        = string
  default     = "1h"

  validation {
    condition     = contains(["15m", "30m", "1h", "2h", "4h", "8h", "12h", "23h"], var.skew_window)
    error_message = "skew_window: one of 15m, 30m, 1h, 2h, 4h, 8h, 12h, 23h."
  }
}

variable "log_level" {
  description = "Application log level of the functions."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"], var.log_level)
    error_message = "log_level: TRACE, DEBUG, INFO, WARN, ERROR or FATAL."
  }
}

variable "log_retention_in_days" {
  description = "Retention of the functions' log groups."
  type        = number
  default     = 30
}

variable "reconcile_schedule" {
  description = "How often the reconciler sweeps every service in the ledger (besides reconciling a service on its ECS deployment state changes): each sweep puts one message per service on the sweep queue, worked through sweep_concurrency invocations at a time."
  type        = string
  default     = "rate(5 minutes)"
}

variable "sweep_concurrency" {
  description = "At most this many reconciler invocations work the sweep queue at once, 10 services each (the event source mapping's scaling_config maximum_concurrency; 2 is Lambda's minimum). See docs/benchmarks.md for how long a sweep takes."
  type        = number
  default     = 5

  validation {
    condition     = var.sweep_concurrency >= 2 && var.sweep_concurrency <= 1000
    error_message = "sweep_concurrency: between 2 and 1000 (Lambda's limits for maximum_concurrency)."
  }
}

variable "lambda_build_dir" {
  description = "cargo-lambda's output directory, $CARGO_TARGET_DIR/lambda (target/lambda by default): <crate>/bootstrap is zipped for each function. Ignored for the functions named in lambda_zips."
  type        = string
  default     = null
}

variable "lambda_zips" {
  description = "Ready-made zip per function crate (post-test-traffic, production-shift, post-shift, reconciler), each holding bootstrap at its root (cargo lambda build --output-format zip)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.lambda_zips) : contains(["post-test-traffic", "production-shift", "post-shift", "reconciler"], k)])
    error_message = "lambda_zips: keys are function crates: post-test-traffic, production-shift, post-shift, reconciler."
  }
}

variable "tags" {
  description = "Tags for every resource that takes them."
  type        = map(string)
  default     = {}
}

variable "alarm_on_hook_failed" {
  description = "Alarm when a hook answers FAILED (ECS rolls the deployment back)."
  type        = bool
  default     = true
}

variable "alarm_on_drift_repaired" {
  description = "Alarm when the reconciler repairs anything (the listener or the ledger had drifted)."
  type        = bool
  default     = true
}

variable "alarm_on_pin_removed_by_reconciler" {
  description = "Alarm when the reconciler removes a pin (one the hooks left behind)."
  type        = bool
  default     = true
}

variable "alarm_topic_arn" {
  description = "SNS topic that the alarms notify when they fire and when they recover (empty: the alarms only change state)."
  type        = string
  default     = ""
}
