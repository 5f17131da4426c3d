# Example: a Fargate service with ECS native blue/green behind an ALB (two target groups, a
# production rule and a header-based test rule), protected by skewguard. The Terraform twin of
# infra/example-service.yaml plus the skewguard stack.
#
#   cargo lambda build --release --arm64
#   terraform init && terraform apply -var lambda_build_dir="${CARGO_TARGET_DIR:-../../../target}/lambda" ...

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.25.0"
    }
  }
}

variable "vpc_id" {
  type = string
}

variable "public_subnet_ids" {
  description = "At least two subnets in different AZs, for the internet-facing ALB."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Subnets for the tasks (with a NAT gateway or VPC endpoints to pull the image)."
  type        = list(string)
}

variable "image" {
  description = "Container image of the backend, built for arm64."
  type        = string
}

variable "deployment_id" {
  description = "This build's deployment ID (usually the git SHA), the value the frontend sends in X-Deployment-ID. A new value is a new task definition revision and so a blue/green deployment."
  type        = string
}

variable "lambda_build_dir" {
  description = "$CARGO_TARGET_DIR/lambda after cargo lambda build --release --arm64."
  type        = string
}

variable "container_port" {
  type    = number
  default = 8080
}

data "aws_partition" "current" {}
data "aws_region" "current" {}

module "skewguard" {
  source = "../"

  # Pins are created on this listener only.
  listener_arns    = [aws_lb_listener.http.arn]
  cluster_name     = "skewguard-example"
  lambda_build_dir = var.lambda_build_dir
  skew_window      = "1h"
}

# ------------------------------------------------------------------------------ load balancer

resource "aws_security_group" "alb" {
  #checkov:skip=CKV_AWS_260:example: a public website answers on port 80
  name_prefix = "skewguard-example-alb-"
  description = "skewguard example ALB"
  vpc_id      = var.vpc_id

  ingress {
    description = "HTTP"
    protocol    = "tcp"
    from_port   = 80
    to_port     = 80
    cidr_blocks = ["0.0.0.0/0"]
  }
  egress {
    description     = "to the tasks"
    protocol        = "tcp"
    from_port       = var.container_port
    to_port         = var.container_port
    security_groups = [aws_security_group.tasks.id]
  }
}

resource "aws_security_group" "tasks" {
  name_prefix = "skewguard-example-tasks-"
  description = "skewguard example tasks, reachable from the ALB only"
  vpc_id      = var.vpc_id

  egress {
    description = "image pulls and AWS APIs"
    protocol    = "tcp"
    from_port   = 443
    to_port     = 443
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_security_group_rule" "tasks_from_alb" {
  description              = "from the ALB"
  type                     = "ingress"
  security_group_id        = aws_security_group.tasks.id
  source_security_group_id = aws_security_group.alb.id
  protocol                 = "tcp"
  from_port                = var.container_port
  to_port                  = var.container_port
}

resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_20:example: plain HTTP, no domain or certificate to redirect to
  #checkov:skip=CKV2_AWS_28:example: a WAF web ACL is the user's choice and costs money
  #checkov:skip=CKV_AWS_150:example: deletion protection would keep terraform destroy from cleaning up
  #checkov:skip=CKV_AWS_91:example: access logs need a log bucket; add one in production
  name                       = "skewguard-example"
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
}

resource "aws_lb_target_group" "blue" {
  #checkov:skip=CKV_AWS_378:example: the targets speak HTTP inside the VPC, behind the ALB
  name        = "skewguard-example-blue"
  vpc_id      = var.vpc_id
  target_type = "ip"
  protocol    = "HTTP"
  port        = var.container_port

  deregistration_delay = 30
  health_check {
    path                = "/healthz"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_target_group" "green" {
  #checkov:skip=CKV_AWS_378:example: the targets speak HTTP inside the VPC, behind the ALB
  name        = "skewguard-example-green"
  vpc_id      = var.vpc_id
  target_type = "ip"
  protocol    = "HTTP"
  port        = var.container_port

  deregistration_delay = 30
  health_check {
    path                = "/healthz"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:example: HTTPS needs a domain and an ACM certificate of the user's
  #checkov:skip=CKV_AWS_103:example: an HTTP listener has no TLS policy
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.blue.arn
  }
}

# ECS moves traffic by rewriting the weights of these two rules: Terraform must not put its own
# back (ignore_changes = [action]). Pins go in the free priorities between them (11-999); the
# pin rules are created by skewguard and must never be managed here.
resource "aws_lb_listener_rule" "production" {
  listener_arn = aws_lb_listener.http.arn
  priority     = 1000

  condition {
    path_pattern {
      values = ["/*"]
    }
  }
  action {
    type = "forward"
    forward {
      target_group {
        arn    = aws_lb_target_group.blue.arn
        weight = 100
      }
      target_group {
        arn    = aws_lb_target_group.green.arn
        weight = 0
      }
    }
  }

  lifecycle {
    ignore_changes = [action]
  }
}

resource "aws_lb_listener_rule" "test" {
  listener_arn = aws_lb_listener.http.arn
  priority     = 10

  condition {
    http_header {
      http_header_name = "X-Skewguard-Test"
      values           = ["true"]
    }
  }
  action {
    type = "forward"
    forward {
      target_group {
        arn    = aws_lb_target_group.blue.arn
        weight = 100
      }
      target_group {
        arn    = aws_lb_target_group.green.arn
        weight = 0
      }
    }
  }

  lifecycle {
    ignore_changes = [action]
  }
}

# ------------------------------------------------------------------------------ the service

resource "aws_ecs_cluster" "this" {
  name = "skewguard-example"

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "app" {
  #checkov:skip=CKV_AWS_158:example: the app's logs, encrypted at rest by CloudWatch Logs
  #checkov:skip=CKV_AWS_338:example: 30 days are enough for an example
  name              = "/ecs/skewguard-example"
  retention_in_days = 30
}

resource "aws_iam_role" "task_execution" {
  name_prefix = "skewguard-example-exec-"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ecs-tasks.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "task_execution" {
  role       = aws_iam_role.task_execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# The role ECS assumes to shift the listener rules' weights.
resource "aws_iam_role" "ecs_load_balancer" {
  name_prefix = "skewguard-example-lb-"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "ecs.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "ecs_load_balancer" {
  role       = aws_iam_role.ecs_load_balancer.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonECSInfrastructureRolePolicyForLoadBalancers"
}

resource "aws_ecs_task_definition" "app" {
  family                   = "skewguard-example"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = "256"
  memory                   = "512"
  execution_role_arn       = aws_iam_role.task_execution.arn

  runtime_platform {
    cpu_architecture        = "ARM64"
    operating_system_family = "LINUX"
  }

  container_definitions = jsonencode([{
    name                   = "app"
    image                  = var.image
    essential              = true
    readonlyRootFilesystem = true
    portMappings           = [{ containerPort = var.container_port, protocol = "tcp" }]
    environment = [
      { name = "DEPLOYMENT_ID", value = var.deployment_id },
      { name = "PORT", value = tostring(var.container_port) },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.app.name
        awslogs-region        = data.aws_region.current.region
        awslogs-stream-prefix = "app"
      }
    }
  }])
}

resource "aws_ecs_service" "app" {
  name                              = "checkout"
  cluster                           = aws_ecs_cluster.this.id
  launch_type                       = "FARGATE"
  desired_count                     = 2
  task_definition                   = aws_ecs_task_definition.app.arn
  health_check_grace_period_seconds = 30

  network_configuration {
    assign_public_ip = false
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
  }

  deployment_controller {
    type = "ECS"
  }

  deployment_configuration {
    strategy             = "BLUE_GREEN"
    bake_time_in_minutes = 5

    dynamic "lifecycle_hook" {
      for_each = module.skewguard.lifecycle_hooks
      content {
        hook_target_arn  = lifecycle_hook.value.hook_target_arn
        role_arn         = lifecycle_hook.value.role_arn
        lifecycle_stages = lifecycle_hook.value.lifecycle_stages
        hook_details     = lifecycle_hook.value.hook_details
      }
    }
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.blue.arn
    container_name   = "app"
    container_port   = var.container_port

    advanced_configuration {
      alternate_target_group_arn = aws_lb_target_group.green.arn
      production_listener_rule   = aws_lb_listener_rule.production.arn
      test_listener_rule         = aws_lb_listener_rule.test.arn
      role_arn                   = aws_iam_role.ecs_load_balancer.arn
    }
  }

  depends_on = [aws_iam_role_policy_attachment.ecs_load_balancer]
}

output "url" {
  value = "http://${aws_lb.this.dns_name}"
}

output "service_arn" {
  description = "Partition key of this service's entries in the skewguard ledger."
  value       = aws_ecs_service.app.id
}
