terraform {
  required_version = ">= 1.5.0"

  required_providers {
    # ECS native blue/green (deployment_configuration.strategy, lifecycle_hook,
    # load_balancer.advanced_configuration) first shipped in 6.4.0; lifecycle_hook.hook_details
    # came later in the 6.x series. 6.25.0 is the provider schema infra/check-iac checks every
    # argument against.
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.25.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4.0"
    }
  }
}
