//! ELBv2 operations on listener rules, and the translation between the SDK's rule shapes and the
//! plain [`ListenerRule`] model.

use std::collections::BTreeMap;

use aws_sdk_elasticloadbalancingv2 as elb;
use elb::types::{
    Action, ActionTypeEnum, FixedResponseActionConfig, ForwardActionConfig,
    HostHeaderConditionConfig, HttpHeaderConditionConfig, HttpRequestMethodConditionConfig,
    PathPatternConditionConfig, QueryStringConditionConfig, QueryStringKeyValuePair, Rule,
    RuleCondition, SourceIpConditionConfig, Tag, TargetGroupTuple,
};

use super::{AwsError, classify};
use crate::listener::{Condition, ListenerRule, Priority, QueryMatch, RuleAction, WeightedTarget};
use crate::pins::PinTags;

pub const TAG_SERVICE: &str = "skewguard:service";
pub const TAG_DEPLOYMENT_ID: &str = "skewguard:deployment-id";

/// DescribeTags accepts at most 20 resource ARNs per call.
const DESCRIBE_TAGS_BATCH: usize = 20;

/// What a pin rule is made of: where it goes and what it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRule {
    pub listener_arn: String,
    pub priority: u32,
    pub conditions: Vec<Condition>,
    pub action: RuleAction,
    pub tags: PinTags,
}

#[derive(Clone, Debug)]
pub struct Elb {
    client: elb::Client,
}

impl Elb {
    pub fn new(client: elb::Client) -> Self {
        Self { client }
    }

    /// Every rule of the listener, the default rule included.
    pub async fn describe_listener_rules(
        &self,
        listener_arn: &str,
    ) -> Result<Vec<ListenerRule>, AwsError> {
        let mut rules = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .client
                .describe_rules()
                .listener_arn(listener_arn)
                .set_marker(marker)
                .page_size(400)
                .send()
                .await
                .map_err(|e| classify("DescribeRules", e))?;
            rules.extend(page.rules().iter().map(rule_from_sdk));
            marker = page
                .next_marker()
                .filter(|m| !m.is_empty())
                .map(str::to_owned);
            if marker.is_none() {
                return Ok(rules);
            }
        }
    }

    /// skewguard tags of the given rules; rules without them are absent from the answer.
    pub async fn describe_pin_tags(
        &self,
        rule_arns: &[String],
    ) -> Result<BTreeMap<String, PinTags>, AwsError> {
        let mut found = BTreeMap::new();
        for batch in rule_arns.chunks(DESCRIBE_TAGS_BATCH) {
            let answer = self
                .client
                .describe_tags()
                .set_resource_arns(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|e| classify("DescribeTags", e))?;
            for description in answer.tag_descriptions() {
                let tag = |key: &str| {
                    description
                        .tags()
                        .iter()
                        .find(|t| t.key() == Some(key))
                        .and_then(|t| t.value())
                        .map(str::to_owned)
                };
                if let (Some(arn), Some(service_arn), Some(deployment_id)) = (
                    description.resource_arn(),
                    tag(TAG_SERVICE),
                    tag(TAG_DEPLOYMENT_ID),
                ) {
                    found.insert(
                        arn.to_owned(),
                        PinTags {
                            service_arn,
                            deployment_id,
                        },
                    );
                }
            }
        }
        Ok(found)
    }

    /// Creates a rule with its tags in one call, so a pin never exists untagged.
    pub async fn create_rule(&self, rule: &NewRule) -> Result<String, AwsError> {
        let answer = self
            .client
            .create_rule()
            .listener_arn(&rule.listener_arn)
            .priority(rule.priority as i32)
            .set_conditions(Some(rule.conditions.iter().map(condition_to_sdk).collect()))
            .actions(action_to_sdk(&rule.action))
            .tags(
                Tag::builder()
                    .key(TAG_SERVICE)
                    .value(&rule.tags.service_arn)
                    .build(),
            )
            .tags(
                Tag::builder()
                    .key(TAG_DEPLOYMENT_ID)
                    .value(&rule.tags.deployment_id)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("CreateRule", e))?;
        answer
            .rules()
            .first()
            .and_then(Rule::rule_arn)
            .map(str::to_owned)
            .ok_or_else(|| {
                AwsError::concluded(
                    "CreateRule",
                    "EmptyAnswer",
                    super::AwsErrorKind::Transient,
                    "CreateRule answered without a rule ARN",
                )
            })
    }

    /// Deletes a rule; a rule that is already gone counts as deleted.
    pub async fn delete_rule(&self, rule_arn: &str) -> Result<(), AwsError> {
        match self.client.delete_rule().rule_arn(rule_arn).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify("DeleteRule", e);
                if err.is("RuleNotFound") {
                    return Ok(());
                }
                // Under a policy conditioned on the rule's tags, deleting a rule that is already
                // gone (a concurrent hook or the reconciler got there first) is denied rather
                // than not found: look before reporting it.
                if err.kind == super::AwsErrorKind::AccessDenied
                    && self.rule_is_gone(rule_arn).await
                {
                    return Ok(());
                }
                Err(err)
            }
        }
    }

    /// Deletes a target group; one that is already gone counts as deleted.
    ///
    /// Errors: `ResourceInUse` while a listener rule still forwards to it (remove the pins
    /// first), and any other AWS error, classified by code.
    pub async fn delete_target_group(&self, target_group_arn: &str) -> Result<(), AwsError> {
        match self
            .client
            .delete_target_group()
            .target_group_arn(target_group_arn)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = classify("DeleteTargetGroup", e);
                if err.is("TargetGroupNotFound") {
                    return Ok(());
                }
                // As for rules: a tag-conditioned policy denies deleting what is already gone.
                if err.kind == super::AwsErrorKind::AccessDenied
                    && self.target_group_is_gone(target_group_arn).await
                {
                    return Ok(());
                }
                Err(err)
            }
        }
    }

    async fn target_group_is_gone(&self, target_group_arn: &str) -> bool {
        match self
            .client
            .describe_target_groups()
            .target_group_arns(target_group_arn)
            .send()
            .await
        {
            Ok(answer) => answer.target_groups().is_empty(),
            Err(e) => classify("DescribeTargetGroups", e).is("TargetGroupNotFound"),
        }
    }

    /// The ARN of the target group named `name`, if it exists (a copy's target group whose
    /// creation was interrupted before its ARN was recorded).
    ///
    /// Errors: any AWS error but `TargetGroupNotFound`, classified by code.
    pub async fn target_group_arn_by_name(&self, name: &str) -> Result<Option<String>, AwsError> {
        match self
            .client
            .describe_target_groups()
            .names(name)
            .send()
            .await
        {
            Ok(answer) => Ok(answer
                .target_groups()
                .iter()
                .find(|tg| tg.target_group_name() == Some(name))
                .and_then(|tg| tg.target_group_arn())
                .map(str::to_owned)),
            Err(e) => {
                let err = classify("DescribeTargetGroups", e);
                if err.is("TargetGroupNotFound") {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn rule_is_gone(&self, rule_arn: &str) -> bool {
        match self
            .client
            .describe_rules()
            .rule_arns(rule_arn)
            .send()
            .await
        {
            Ok(answer) => answer.rules().is_empty(),
            Err(e) => classify("DescribeRules", e).is("RuleNotFound"),
        }
    }
}

/// A forward to one target group, or a fixed response; pins need nothing else.
fn action_to_sdk(action: &RuleAction) -> Action {
    match action {
        RuleAction::Forward(targets) => Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .forward_config(
                ForwardActionConfig::builder()
                    .set_target_groups(Some(
                        targets
                            .iter()
                            .map(|t| {
                                TargetGroupTuple::builder()
                                    .target_group_arn(&t.target_group_arn)
                                    .weight(t.weight as i32)
                                    .build()
                            })
                            .collect(),
                    ))
                    .build(),
            )
            .build(),
        RuleAction::FixedResponse {
            status_code,
            content_type,
            body,
        } => Action::builder()
            .r#type(ActionTypeEnum::FixedResponse)
            .fixed_response_config(
                FixedResponseActionConfig::builder()
                    .status_code(status_code.to_string())
                    .set_content_type(content_type.clone())
                    .set_message_body(body.clone())
                    .build(),
            )
            .build(),
        RuleAction::Other(_) => Action::builder().build(),
    }
}

/// Translates an SDK rule into the plain model.
pub fn rule_from_sdk(rule: &Rule) -> ListenerRule {
    let priority = match rule.priority() {
        Some("default") | None => Priority::Default,
        Some(p) => p.parse().map(Priority::Number).unwrap_or(Priority::Default),
    };
    let priority = if rule.is_default() == Some(true) {
        Priority::Default
    } else {
        priority
    };
    let mut uncopyable = Vec::new();
    if !rule.transforms().is_empty() {
        uncopyable.push("transforms (URL or host rewrite)".to_owned());
    }
    let mut actions: Vec<&Action> = rule.actions().iter().collect();
    actions.sort_by_key(|a| a.order().unwrap_or(i32::MAX));
    let action = match actions.as_slice() {
        [only] => action_from_sdk(only),
        [] => RuleAction::Other("no action".to_owned()),
        [.., last] => {
            uncopyable.push(format!(
                "{} actions before the final one (e.g. authentication)",
                actions.len() - 1
            ));
            action_from_sdk(last)
        }
    };
    if let RuleAction::Other(kind) = &action {
        uncopyable.push(format!("a {kind} action"));
    }
    ListenerRule {
        arn: rule.rule_arn().unwrap_or_default().to_owned(),
        priority,
        conditions: rule.conditions().iter().map(condition_from_sdk).collect(),
        action,
        uncopyable,
    }
}

fn action_from_sdk(action: &Action) -> RuleAction {
    match action.r#type() {
        Some(ActionTypeEnum::Forward) => {
            let tuples: Vec<WeightedTarget> = action
                .forward_config()
                .map(|f| f.target_groups())
                .unwrap_or_default()
                .iter()
                .filter_map(|t| {
                    Some(WeightedTarget {
                        target_group_arn: t.target_group_arn()?.to_owned(),
                        weight: t.weight().unwrap_or(1).max(0) as u32,
                    })
                })
                .collect();
            if tuples.is_empty() {
                // The older single-target form.
                RuleAction::Forward(
                    action
                        .target_group_arn()
                        .map(|tg| WeightedTarget {
                            target_group_arn: tg.to_owned(),
                            weight: 1,
                        })
                        .into_iter()
                        .collect(),
                )
            } else {
                RuleAction::Forward(tuples)
            }
        }
        Some(ActionTypeEnum::FixedResponse) => {
            let config = action.fixed_response_config();
            RuleAction::FixedResponse {
                status_code: config
                    .and_then(|c| c.status_code())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(503),
                content_type: config.and_then(|c| c.content_type()).map(str::to_owned),
                body: config.and_then(|c| c.message_body()).map(str::to_owned),
            }
        }
        Some(other) => RuleAction::Other(other.as_str().to_owned()),
        None => RuleAction::Other("unknown".to_owned()),
    }
}

fn condition_from_sdk(c: &RuleCondition) -> Condition {
    let field = c.field().unwrap_or_default();
    let legacy = || c.values().to_vec();
    let has_regex = !c.regex_values().is_empty()
        || c.host_header_config()
            .is_some_and(|h| !h.regex_values().is_empty())
        || c.path_pattern_config()
            .is_some_and(|p| !p.regex_values().is_empty())
        || c.http_header_config()
            .is_some_and(|h| !h.regex_values().is_empty());
    if has_regex {
        return Condition::Unsupported(format!("{field} with regex values"));
    }
    let pick = |config: Option<&[String]>| match config {
        Some(values) if !values.is_empty() => values.to_vec(),
        _ => legacy(),
    };
    match field {
        "host-header" => Condition::HostHeader(pick(c.host_header_config().map(|h| h.values()))),
        "path-pattern" => Condition::PathPattern(pick(c.path_pattern_config().map(|p| p.values()))),
        "http-header" => match c.http_header_config() {
            Some(h) => Condition::HttpHeader {
                name: h.http_header_name().unwrap_or_default().to_owned(),
                values: h.values().to_vec(),
            },
            None => Condition::Unsupported("http-header without a header name".to_owned()),
        },
        "query-string" => Condition::QueryString(
            c.query_string_config()
                .map(|q| q.values())
                .unwrap_or_default()
                .iter()
                .map(|kv| QueryMatch {
                    key: kv.key().map(str::to_owned),
                    value: kv.value().unwrap_or_default().to_owned(),
                })
                .collect(),
        ),
        "http-request-method" => {
            Condition::HttpRequestMethod(pick(c.http_request_method_config().map(|m| m.values())))
        }
        "source-ip" => Condition::SourceIp(pick(c.source_ip_config().map(|s| s.values()))),
        other => Condition::Unsupported(format!("{other} condition")),
    }
}

/// Translates a plain condition into the SDK's shape (the `*Config` form the API documents).
pub fn condition_to_sdk(c: &Condition) -> RuleCondition {
    let builder = RuleCondition::builder();
    match c {
        Condition::HostHeader(values) => builder.field("host-header").host_header_config(
            HostHeaderConditionConfig::builder()
                .set_values(Some(values.clone()))
                .build(),
        ),
        Condition::PathPattern(values) => builder.field("path-pattern").path_pattern_config(
            PathPatternConditionConfig::builder()
                .set_values(Some(values.clone()))
                .build(),
        ),
        Condition::HttpHeader { name, values } => builder.field("http-header").http_header_config(
            HttpHeaderConditionConfig::builder()
                .http_header_name(name)
                .set_values(Some(values.clone()))
                .build(),
        ),
        Condition::QueryString(pairs) => builder.field("query-string").query_string_config(
            QueryStringConditionConfig::builder()
                .set_values(Some(
                    pairs
                        .iter()
                        .map(|p| {
                            QueryStringKeyValuePair::builder()
                                .set_key(p.key.clone())
                                .value(&p.value)
                                .build()
                        })
                        .collect(),
                ))
                .build(),
        ),
        Condition::HttpRequestMethod(values) => builder
            .field("http-request-method")
            .http_request_method_config(
                HttpRequestMethodConditionConfig::builder()
                    .set_values(Some(values.clone()))
                    .build(),
            ),
        Condition::SourceIp(values) => builder.field("source-ip").source_ip_config(
            SourceIpConditionConfig::builder()
                .set_values(Some(values.clone()))
                .build(),
        ),
        // Never produced for a pin: the planner refuses to copy unsupported conditions.
        Condition::Unsupported(_) => builder,
    }
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_survive_a_round_trip_through_the_sdk_shapes() {
        let conditions = vec![
            Condition::HostHeader(vec!["shop.example.com".into()]),
            Condition::PathPattern(vec!["/api/*".into()]),
            Condition::HttpHeader {
                name: "X-Deployment-ID".into(),
                values: vec!["abc".into()],
            },
            Condition::QueryString(vec![QueryMatch {
                key: Some("dpl".into()),
                value: "abc".into(),
            }]),
            Condition::HttpRequestMethod(vec!["GET".into()]),
            Condition::SourceIp(vec!["10.0.0.0/8".into()]),
        ];
        for c in conditions {
            assert_eq!(condition_from_sdk(&condition_to_sdk(&c)), c);
        }
    }

    #[test]
    fn weighted_forward_and_default_priority_are_read() {
        let rule = Rule::builder()
            .rule_arn("arn:rule")
            .priority("default")
            .is_default(true)
            .actions(
                Action::builder()
                    .r#type(ActionTypeEnum::Forward)
                    .forward_config(
                        ForwardActionConfig::builder()
                            .target_groups(
                                TargetGroupTuple::builder()
                                    .target_group_arn("tg-a")
                                    .weight(1)
                                    .build(),
                            )
                            .target_groups(
                                TargetGroupTuple::builder()
                                    .target_group_arn("tg-b")
                                    .weight(0)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .build();
        let plain = rule_from_sdk(&rule);
        assert_eq!(plain.priority, Priority::Default);
        assert_eq!(plain.live_targets(), vec!["tg-a"]);
        assert_eq!(plain.forward_targets(), vec!["tg-a", "tg-b"]);
        assert!(plain.uncopyable.is_empty());
    }

    #[test]
    fn authentication_before_forward_is_flagged_uncopyable() {
        let rule = Rule::builder()
            .rule_arn("arn:rule")
            .priority("10")
            .actions(
                Action::builder()
                    .r#type(ActionTypeEnum::AuthenticateOidc)
                    .order(1)
                    .build(),
            )
            .actions(
                Action::builder()
                    .r#type(ActionTypeEnum::Forward)
                    .order(2)
                    .target_group_arn("tg-a")
                    .build(),
            )
            .build();
        let plain = rule_from_sdk(&rule);
        assert_eq!(plain.priority, Priority::Number(10));
        assert_eq!(plain.live_targets(), vec!["tg-a"]);
        assert_eq!(plain.uncopyable.len(), 1);
    }

    #[test]
    fn regex_conditions_are_recognised_as_unsupported() {
        let c = RuleCondition::builder()
            .field("path-pattern")
            .path_pattern_config(
                PathPatternConditionConfig::builder()
                    .regex_values("^/api/.*")
                    .build(),
            )
            .build();
        assert!(matches!(condition_from_sdk(&c), Condition::Unsupported(_)));
    }
}

/// How a target group receives and health-checks its targets: what a retention copy's target
/// group copies from the previous version's (DescribeTargetGroups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetGroupShape {
    pub vpc_id: Option<String>,
    pub protocol: Option<String>,
    pub protocol_version: Option<String>,
    pub port: Option<i32>,
    pub target_type: Option<String>,
    pub health_check_protocol: Option<String>,
    pub health_check_port: Option<String>,
    pub health_check_path: Option<String>,
    pub health_check_interval_seconds: Option<i32>,
    pub health_check_timeout_seconds: Option<i32>,
    pub healthy_threshold_count: Option<i32>,
    pub unhealthy_threshold_count: Option<i32>,
    /// The HTTP codes a healthy target answers (`200`, `200-299`).
    pub matcher_http_code: Option<String>,
    /// The load balancers the group is associated with.
    pub load_balancer_arns: Vec<String>,
}

impl Elb {
    /// How the target group `arn` receives and health-checks its targets.
    ///
    /// Errors: any AWS error, classified by code; `TargetGroupNotFound` when it is gone.
    pub async fn target_group_shape(&self, arn: &str) -> Result<TargetGroupShape, AwsError> {
        let answer = self
            .client
            .describe_target_groups()
            .target_group_arns(arn)
            .send()
            .await
            .map_err(|e| classify("DescribeTargetGroups", e))?;
        let tg = answer.target_groups().first().ok_or_else(|| {
            AwsError::concluded(
                "DescribeTargetGroups",
                "TargetGroupNotFound",
                super::AwsErrorKind::Invalid,
                "DescribeTargetGroups answered no target group",
            )
        })?;
        Ok(TargetGroupShape {
            vpc_id: tg.vpc_id().map(str::to_owned),
            protocol: tg.protocol().map(|p| p.as_str().to_owned()),
            protocol_version: tg.protocol_version().map(str::to_owned),
            port: tg.port(),
            target_type: tg.target_type().map(|t| t.as_str().to_owned()),
            health_check_protocol: tg.health_check_protocol().map(|p| p.as_str().to_owned()),
            health_check_port: tg.health_check_port().map(str::to_owned),
            health_check_path: tg.health_check_path().map(str::to_owned),
            health_check_interval_seconds: tg.health_check_interval_seconds(),
            health_check_timeout_seconds: tg.health_check_timeout_seconds(),
            healthy_threshold_count: tg.healthy_threshold_count(),
            unhealthy_threshold_count: tg.unhealthy_threshold_count(),
            matcher_http_code: tg.matcher().and_then(|m| m.http_code()).map(str::to_owned),
            load_balancer_arns: tg.load_balancer_arns().to_vec(),
        })
    }

    /// Creates the target group `name` shaped like `shape`, with `tags` in the same request so
    /// it never exists untagged (skewguard's policy allows creating only with them). ELB
    /// answers the existing group for a repeated request with the same name and settings, so
    /// a retry after a lost answer finds what the first attempt made.
    ///
    /// Errors: any AWS error, classified by code (`DuplicateTargetGroupName` when a group of
    /// that name exists with other settings; `TooManyTargetGroups` at the account quota).
    pub async fn create_target_group(
        &self,
        name: &str,
        shape: &TargetGroupShape,
        tags: &[(&str, String)],
    ) -> Result<String, AwsError> {
        use elb::types::{Matcher, ProtocolEnum, TargetTypeEnum};
        let answer = self
            .client
            .create_target_group()
            .name(name)
            .set_protocol(shape.protocol.as_deref().map(ProtocolEnum::from))
            .set_protocol_version(shape.protocol_version.clone())
            .set_port(shape.port)
            .set_vpc_id(shape.vpc_id.clone())
            .set_target_type(shape.target_type.as_deref().map(TargetTypeEnum::from))
            .set_health_check_protocol(
                shape
                    .health_check_protocol
                    .as_deref()
                    .map(ProtocolEnum::from),
            )
            .set_health_check_port(shape.health_check_port.clone())
            .set_health_check_path(shape.health_check_path.clone())
            .set_health_check_interval_seconds(shape.health_check_interval_seconds)
            .set_health_check_timeout_seconds(shape.health_check_timeout_seconds)
            .set_healthy_threshold_count(shape.healthy_threshold_count)
            .set_unhealthy_threshold_count(shape.unhealthy_threshold_count)
            .set_matcher(
                shape
                    .matcher_http_code
                    .as_ref()
                    .map(|code| Matcher::builder().http_code(code).build()),
            )
            .set_tags(Some(
                tags.iter()
                    .map(|(key, value)| Tag::builder().key(*key).value(value).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| classify("CreateTargetGroup", e))?;
        answer
            .target_groups()
            .first()
            .and_then(|tg| tg.target_group_arn())
            .map(str::to_owned)
            .ok_or_else(|| {
                AwsError::concluded(
                    "CreateTargetGroup",
                    "EmptyAnswer",
                    super::AwsErrorKind::Transient,
                    "CreateTargetGroup answered without a target group ARN",
                )
            })
    }

    /// How many targets of the target group `arn` are `healthy` (DescribeTargetHealth).
    ///
    /// Errors: any AWS error, classified by code.
    pub async fn healthy_targets(&self, arn: &str) -> Result<usize, AwsError> {
        let answer = self
            .client
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .map_err(|e| classify("DescribeTargetHealth", e))?;
        Ok(answer
            .target_health_descriptions()
            .iter()
            .filter(|d| {
                d.target_health().and_then(|h| h.state())
                    == Some(&elb::types::TargetHealthStateEnum::Healthy)
            })
            .count())
    }
}

/// How much of a load balancer's rule and target-group quotas is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadBalancerUsage {
    /// Rules on all its listeners, default rules not counted (as the quota counts them).
    pub rules: usize,
    /// Target groups associated with it.
    pub target_groups: usize,
}

impl Elb {
    /// The rules and target groups a load balancer uses now (DescribeListeners, DescribeRules
    /// per listener, DescribeTargetGroups), for the quota check before a retention copy.
    ///
    /// Errors: any AWS error, classified by code.
    pub async fn load_balancer_usage(
        &self,
        load_balancer_arn: &str,
    ) -> Result<LoadBalancerUsage, AwsError> {
        let mut listeners = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .client
                .describe_listeners()
                .load_balancer_arn(load_balancer_arn)
                .set_marker(marker)
                .page_size(400)
                .send()
                .await
                .map_err(|e| classify("DescribeListeners", e))?;
            listeners.extend(
                page.listeners()
                    .iter()
                    .filter_map(|l| l.listener_arn().map(str::to_owned)),
            );
            marker = page
                .next_marker()
                .filter(|m| !m.is_empty())
                .map(str::to_owned);
            if marker.is_none() {
                break;
            }
        }
        let mut rules = 0;
        for listener in &listeners {
            rules += self
                .describe_listener_rules(listener)
                .await?
                .iter()
                .filter(|r| !r.is_default())
                .count();
        }
        let mut target_groups = 0;
        let mut marker = None;
        loop {
            let page = self
                .client
                .describe_target_groups()
                .load_balancer_arn(load_balancer_arn)
                .set_marker(marker)
                .page_size(400)
                .send()
                .await
                .map_err(|e| classify("DescribeTargetGroups", e))?;
            target_groups += page.target_groups().len();
            marker = page
                .next_marker()
                .filter(|m| !m.is_empty())
                .map(str::to_owned);
            if marker.is_none() {
                break;
            }
        }
        Ok(LoadBalancerUsage {
            rules,
            target_groups,
        })
    }
}
