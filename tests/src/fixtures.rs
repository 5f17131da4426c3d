//! Realistic ECS blue/green plumbing in moto: an ALB, its listener, the two target groups ECS
//! alternates between, the production (and test) listener rule; and skewguard's ledger table.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, FixedResponseActionConfig, ForwardActionConfig,
    HttpHeaderConditionConfig, LoadBalancerTypeEnum, PathPatternConditionConfig, ProtocolEnum,
    Rule, RuleCondition, TargetGroupTuple, TargetTypeEnum,
};

use crate::aws::{ACCESS_KEY_ID, REGION};
use crate::moto::{WorldError, http_request};

type Elb = aws_sdk_elasticloadbalancingv2::Client;

/// The header (and value) of the test-traffic rule [`AlbFixture::with_test_rule`] adds.
pub const TEST_TRAFFIC_HEADER: (&str, &str) = ("X-Test-Traffic", "1");
/// The port of the listeners the fixtures create.
pub const LISTENER_PORT: u16 = 80;

/// skewguard's ledger: PK `serviceArn` (S), SK `deploymentId` (S), on-demand, TTL on
/// `expiresAt` (as `infra/template.yaml` creates it).
pub async fn create_ledger_table(
    ddb: &aws_sdk_dynamodb::Client,
    name: &str,
) -> Result<(), WorldError> {
    let attribute = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| WorldError::Other(format!("attribute definition {n}: {e}")))
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .map_err(|e| WorldError::Other(format!("key schema element {n}: {e}")))
    };
    ddb.create_table()
        .table_name(name)
        .attribute_definitions(attribute("serviceArn")?)
        .attribute_definitions(attribute("deploymentId")?)
        .key_schema(key("serviceArn", KeyType::Hash)?)
        .key_schema(key("deploymentId", KeyType::Range)?)
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .map_err(WorldError::aws(format!("DynamoDB CreateTable {name}")))?;
    ddb.update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name("expiresAt")
                .build()
                .map_err(|e| WorldError::Other(format!("TTL specification: {e}")))?,
        )
        .send()
        .await
        .map_err(WorldError::aws(format!("DynamoDB UpdateTimeToLive {name}")))?;
    Ok(())
}

/// moto's default VPC and its default subnets (one per availability zone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub vpc_id: String,
    pub subnet_ids: Vec<String>,
}

impl Vpc {
    /// Reads moto's default VPC through its EC2 query API (`DescribeSubnets`,
    /// `default-for-az = true`): the project builds no EC2 SDK client.
    pub async fn default_in(moto_endpoint: &str) -> Result<Vpc, WorldError> {
        let addr = moto_endpoint
            .strip_prefix("http://")
            .unwrap_or(moto_endpoint)
            .trim_end_matches('/')
            .parse()
            .map_err(|e| WorldError::Other(format!("moto endpoint {moto_endpoint}: {e}")))?;
        // moto routes by the SigV4 credential scope (service and region); it checks no signature.
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20250101/{REGION}/ec2/aws4_request, \
             SignedHeaders=host, Signature=0"
        );
        let body = "Action=DescribeSubnets&Version=2016-11-15\
                    &Filter.1.Name=default-for-az&Filter.1.Value.1=true";
        let (status, xml) = http_request(
            addr,
            "POST",
            "/",
            &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("authorization", &authorization),
            ],
            body.as_bytes().to_vec(),
        )
        .await?;
        if status != 200 {
            return Err(WorldError::Aws {
                operation: "EC2 DescribeSubnets".to_owned(),
                message: format!("HTTP {status}: {xml}"),
            });
        }
        let subnet_ids = xml_values(&xml, "subnetId");
        let vpc_ids = xml_values(&xml, "vpcId");
        match vpc_ids.first() {
            Some(vpc_id) if subnet_ids.len() >= 2 && vpc_ids.iter().all(|v| v == vpc_id) => {
                Ok(Vpc {
                    vpc_id: vpc_id.clone(),
                    subnet_ids,
                })
            }
            _ => Err(WorldError::Aws {
                operation: "EC2 DescribeSubnets".to_owned(),
                message: format!("expected a default VPC with 2+ default subnets, got: {xml}"),
            }),
        }
    }
}

/// The text of every `<tag>…</tag>` element, in document order.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut values = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let Some(end) = rest.find(&close) else { break };
        values.push(rest[..end].to_owned());
        rest = &rest[end + close.len()..];
    }
    values
}

/// An ALB set up the way ECS blue/green expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlbFixture {
    pub load_balancer_arn: String,
    pub listener_arn: String,
    /// Target group 1: weight 1 in every rule at first (the service's `targetGroupArn`).
    pub blue_tg: String,
    /// Target group 2: weight 0 at first (`advancedConfiguration.alternateTargetGroupArn`).
    pub green_tg: String,
    /// The listener's default rule, or the path rule.
    pub production_rule_arn: String,
    pub test_rule_arn: Option<String>,
    pub port: u16,
    /// The production rule's path pattern; `None` when the default rule is production.
    pub path_pattern: Option<String>,
}

impl AlbFixture {
    /// ALB `name` with an HTTP:80 listener whose default action is the production route:
    /// a weighted forward, `{name}-tg1` weight 1 / `{name}-tg2` weight 0.
    pub async fn with_default_rule_as_production(
        elb: &Elb,
        vpc: &Vpc,
        name: &str,
    ) -> Result<AlbFixture, WorldError> {
        check_name(name)?;
        let (blue_tg, green_tg) = create_target_group_pair(elb, vpc, name).await?;
        let load_balancer_arn = create_load_balancer(elb, vpc, name).await?;
        let listener_arn = create_listener(
            elb,
            &load_balancer_arn,
            weighted_forward(&[(&blue_tg, 1), (&green_tg, 0)]),
        )
        .await?;
        let rules = describe_rules(elb, &listener_arn).await?;
        let production_rule_arn = rules
            .iter()
            .find(|r| r.is_default() == Some(true))
            .and_then(|r| r.rule_arn())
            .ok_or_else(|| {
                WorldError::Other(format!("listener {listener_arn} has no default rule"))
            })?
            .to_owned();
        Ok(AlbFixture {
            load_balancer_arn,
            listener_arn,
            blue_tg,
            green_tg,
            production_rule_arn,
            test_rule_arn: None,
            port: LISTENER_PORT,
            path_pattern: None,
        })
    }

    /// A production rule at `priority` matching `path_pattern`, forwarding weighted to two new
    /// target groups (`{name}-tg1` weight 1 / `{name}-tg2` weight 0).
    ///
    /// With `listener_arn`, the rule goes on that listener (services sharing an ALB); without,
    /// ALB `name` is created with an HTTP:80 listener whose default action answers a fixed 404.
    pub async fn with_path_rule_as_production(
        elb: &Elb,
        vpc: &Vpc,
        name: &str,
        listener_arn: Option<&str>,
        priority: i32,
        path_pattern: &str,
    ) -> Result<AlbFixture, WorldError> {
        check_name(name)?;
        let (blue_tg, green_tg) = create_target_group_pair(elb, vpc, name).await?;
        let (load_balancer_arn, listener_arn, port) = match listener_arn {
            Some(arn) => {
                let listeners = elb
                    .describe_listeners()
                    .listener_arns(arn)
                    .send()
                    .await
                    .map_err(WorldError::aws(format!("ELBv2 DescribeListeners {arn}")))?;
                let listener = listeners.listeners().first().ok_or_else(|| {
                    WorldError::Other(format!("DescribeListeners {arn} returned nothing"))
                })?;
                let port = listener.port().and_then(|p| u16::try_from(p).ok());
                (
                    listener.load_balancer_arn().unwrap_or_default().to_owned(),
                    arn.to_owned(),
                    port.unwrap_or(LISTENER_PORT),
                )
            }
            None => {
                let load_balancer_arn = create_load_balancer(elb, vpc, name).await?;
                let not_found = Action::builder()
                    .r#type(ActionTypeEnum::FixedResponse)
                    .fixed_response_config(
                        FixedResponseActionConfig::builder()
                            .status_code("404")
                            .content_type("text/plain")
                            .message_body("no route")
                            .build(),
                    )
                    .build();
                let listener_arn = create_listener(elb, &load_balancer_arn, not_found).await?;
                (load_balancer_arn, listener_arn, LISTENER_PORT)
            }
        };
        let production_rule_arn = create_rule(
            elb,
            &listener_arn,
            priority,
            vec![path_condition(path_pattern)],
            weighted_forward(&[(&blue_tg, 1), (&green_tg, 0)]),
        )
        .await?;
        Ok(AlbFixture {
            load_balancer_arn,
            listener_arn,
            blue_tg,
            green_tg,
            production_rule_arn,
            test_rule_arn: None,
            port,
            path_pattern: Some(path_pattern.to_owned()),
        })
    }

    /// Adds the test listener rule at `priority` (which must come before the production rule):
    /// `X-Test-Traffic: 1` (and the production path pattern, if any), forwarding weighted to
    /// the same two target groups, tg1 weight 1 / tg2 weight 0.
    pub async fn with_test_rule(mut self, elb: &Elb, priority: i32) -> Result<Self, WorldError> {
        let mut conditions = vec![header_condition(
            TEST_TRAFFIC_HEADER.0,
            TEST_TRAFFIC_HEADER.1,
        )];
        if let Some(pattern) = &self.path_pattern {
            conditions.push(path_condition(pattern));
        }
        let arn = create_rule(
            elb,
            &self.listener_arn,
            priority,
            conditions,
            weighted_forward(&[(&self.blue_tg, 1), (&self.green_tg, 0)]),
        )
        .await?;
        self.test_rule_arn = Some(arn);
        Ok(self)
    }

    /// `[blue_tg, green_tg]`
    pub fn target_groups(&self) -> [&str; 2] {
        [&self.blue_tg, &self.green_tg]
    }
}

/// ALB, target-group prefix: alphanumerics and hyphens, room for the `-tg1` suffix.
fn check_name(name: &str) -> Result<(), WorldError> {
    let ok = !name.is_empty()
        && name.len() <= 28
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(WorldError::Other(format!(
            "fixture name {name:?}: use 1-28 alphanumerics and single inner hyphens \
             (it names the ALB and its `-tg1`/`-tg2` target groups)"
        )))
    }
}

/// A forward action with a weighted `ForwardConfig`.
pub fn weighted_forward(weights: &[(&str, i32)]) -> Action {
    let mut config = ForwardActionConfig::builder();
    for (arn, weight) in weights {
        config = config.target_groups(
            TargetGroupTuple::builder()
                .target_group_arn(*arn)
                .weight(*weight)
                .build(),
        );
    }
    Action::builder()
        .r#type(ActionTypeEnum::Forward)
        .forward_config(config.build())
        .build()
}

pub fn path_condition(pattern: &str) -> RuleCondition {
    RuleCondition::builder()
        .field("path-pattern")
        .path_pattern_config(
            PathPatternConditionConfig::builder()
                .values(pattern)
                .build(),
        )
        .build()
}

pub fn header_condition(name: &str, value: &str) -> RuleCondition {
    RuleCondition::builder()
        .field("http-header")
        .http_header_config(
            HttpHeaderConditionConfig::builder()
                .http_header_name(name)
                .values(value)
                .build(),
        )
        .build()
}

/// An HTTP:80, IP-target target group in the VPC; returns its ARN.
pub async fn create_target_group(elb: &Elb, vpc: &Vpc, name: &str) -> Result<String, WorldError> {
    let out = elb
        .create_target_group()
        .name(name)
        .protocol(ProtocolEnum::Http)
        .port(80)
        .vpc_id(&vpc.vpc_id)
        .target_type(TargetTypeEnum::Ip)
        .health_check_path("/health")
        .send()
        .await
        .map_err(WorldError::aws(format!("ELBv2 CreateTargetGroup {name}")))?;
    out.target_groups()
        .first()
        .and_then(|tg| tg.target_group_arn())
        .map(str::to_owned)
        .ok_or_else(|| WorldError::Other(format!("CreateTargetGroup {name} returned no ARN")))
}

async fn create_target_group_pair(
    elb: &Elb,
    vpc: &Vpc,
    name: &str,
) -> Result<(String, String), WorldError> {
    Ok((
        create_target_group(elb, vpc, &format!("{name}-tg1")).await?,
        create_target_group(elb, vpc, &format!("{name}-tg2")).await?,
    ))
}

async fn create_load_balancer(elb: &Elb, vpc: &Vpc, name: &str) -> Result<String, WorldError> {
    let out = elb
        .create_load_balancer()
        .name(name)
        .r#type(LoadBalancerTypeEnum::Application)
        .set_subnets(Some(vpc.subnet_ids.iter().take(2).cloned().collect()))
        .send()
        .await
        .map_err(WorldError::aws(format!("ELBv2 CreateLoadBalancer {name}")))?;
    out.load_balancers()
        .first()
        .and_then(|lb| lb.load_balancer_arn())
        .map(str::to_owned)
        .ok_or_else(|| WorldError::Other(format!("CreateLoadBalancer {name} returned no ARN")))
}

async fn create_listener(
    elb: &Elb,
    load_balancer_arn: &str,
    default_action: Action,
) -> Result<String, WorldError> {
    let out = elb
        .create_listener()
        .load_balancer_arn(load_balancer_arn)
        .protocol(ProtocolEnum::Http)
        .port(i32::from(LISTENER_PORT))
        .default_actions(default_action)
        .send()
        .await
        .map_err(WorldError::aws("ELBv2 CreateListener"))?;
    out.listeners()
        .first()
        .and_then(|l| l.listener_arn())
        .map(str::to_owned)
        .ok_or_else(|| WorldError::Other("CreateListener returned no ARN".to_owned()))
}

async fn create_rule(
    elb: &Elb,
    listener_arn: &str,
    priority: i32,
    conditions: Vec<RuleCondition>,
    action: Action,
) -> Result<String, WorldError> {
    let out = elb
        .create_rule()
        .listener_arn(listener_arn)
        .priority(priority)
        .set_conditions(Some(conditions))
        .actions(action)
        .send()
        .await
        .map_err(WorldError::aws(format!(
            "ELBv2 CreateRule priority {priority}"
        )))?;
    out.rules()
        .first()
        .and_then(|r| r.rule_arn())
        .map(str::to_owned)
        .ok_or_else(|| WorldError::Other("CreateRule returned no ARN".to_owned()))
}

/// Every rule of a listener (all pages), in moto's order: non-default rules in creation order
/// (not by priority), then the default rule.
pub async fn describe_rules(elb: &Elb, listener_arn: &str) -> Result<Vec<Rule>, WorldError> {
    let mut rules = Vec::new();
    let mut marker = None;
    loop {
        let out = elb
            .describe_rules()
            .listener_arn(listener_arn)
            .set_marker(marker)
            .send()
            .await
            .map_err(WorldError::aws(format!(
                "ELBv2 DescribeRules {listener_arn}"
            )))?;
        rules.extend(out.rules().iter().cloned());
        match out.next_marker() {
            Some(next) if !next.is_empty() => marker = Some(next.to_owned()),
            _ => return Ok(rules),
        }
    }
}

/// The `(target group ARN, weight)` pairs of a rule's forward action.
pub async fn forward_weights(elb: &Elb, rule_arn: &str) -> Result<Vec<(String, i32)>, WorldError> {
    let out = elb
        .describe_rules()
        .rule_arns(rule_arn)
        .send()
        .await
        .map_err(WorldError::aws(format!("ELBv2 DescribeRules {rule_arn}")))?;
    let rule = out
        .rules()
        .first()
        .ok_or_else(|| WorldError::Other(format!("no rule {rule_arn}")))?;
    let forward = rule
        .actions()
        .iter()
        .find(|a| a.r#type() == Some(&ActionTypeEnum::Forward))
        .ok_or_else(|| WorldError::Other(format!("rule {rule_arn} has no forward action")))?;
    Ok(
        match (forward.forward_config(), forward.target_group_arn()) {
            (Some(config), _) => config
                .target_groups()
                .iter()
                .map(|t| {
                    (
                        t.target_group_arn().unwrap_or_default().to_owned(),
                        t.weight().unwrap_or(1),
                    )
                })
                .collect(),
            (None, Some(arn)) => vec![(arn.to_owned(), 1)],
            (None, None) => Vec::new(),
        },
    )
}

/// Replaces a rule's actions with a weighted forward (what ECS does when it shifts traffic).
///
/// moto quirk: on a listener's default rule this changes what `DescribeRules` returns but not the
/// listener's `DefaultActions` in `DescribeListeners`.
pub async fn set_forward_weights(
    elb: &Elb,
    rule_arn: &str,
    weights: &[(&str, i32)],
) -> Result<(), WorldError> {
    elb.modify_rule()
        .rule_arn(rule_arn)
        .actions(weighted_forward(weights))
        .send()
        .await
        .map_err(WorldError::aws(format!("ELBv2 ModifyRule {rule_arn}")))?;
    Ok(())
}
