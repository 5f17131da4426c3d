//! The lifecycle-hook event ECS sends and the answer it expects back.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleStage {
    ReconcileService,
    PreScaleUp,
    PostScaleUp,
    TestTrafficShift,
    PostTestTrafficShift,
    PreProductionTrafficShift,
    ProductionTrafficShift,
    PostProductionTrafficShift,
}

impl LifecycleStage {
    pub const ALL: [LifecycleStage; 8] = [
        Self::ReconcileService,
        Self::PreScaleUp,
        Self::PostScaleUp,
        Self::TestTrafficShift,
        Self::PostTestTrafficShift,
        Self::PreProductionTrafficShift,
        Self::ProductionTrafficShift,
        Self::PostProductionTrafficShift,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReconcileService => "RECONCILE_SERVICE",
            Self::PreScaleUp => "PRE_SCALE_UP",
            Self::PostScaleUp => "POST_SCALE_UP",
            Self::TestTrafficShift => "TEST_TRAFFIC_SHIFT",
            Self::PostTestTrafficShift => "POST_TEST_TRAFFIC_SHIFT",
            Self::PreProductionTrafficShift => "PRE_PRODUCTION_TRAFFIC_SHIFT",
            Self::ProductionTrafficShift => "PRODUCTION_TRAFFIC_SHIFT",
            Self::PostProductionTrafficShift => "POST_PRODUCTION_TRAFFIC_SHIFT",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

impl fmt::Display for LifecycleStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Traffic weights keyed by service revision ARN, as ECS sends them: percentages 0–100, typed
/// `Double` in the API (LINEAR/CANARY steps are multiples of 0.1, e.g. a 2.5 % canary).
pub type Weights = BTreeMap<String, f64>;

#[derive(Debug, Clone, PartialEq)]
pub struct HookEvent {
    pub execution_id: String,
    pub stage: LifecycleStage,
    /// The service-deployment ARN (`resourceArn`).
    pub deployment_arn: String,
    pub service_arn: String,
    /// Green: the revision being deployed.
    pub target_revision_arn: String,
    pub test_weights: Weights,
    pub production_weights: Weights,
    pub hook_details: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed hook event: {0}")]
pub struct MalformedEvent(pub String);

impl HookEvent {
    /// Parses the raw payload; every shape error names the field, never echoes the payload.
    pub fn parse(raw: &Value) -> Result<Self, MalformedEvent> {
        let top = raw
            .as_object()
            .ok_or_else(|| MalformedEvent(format!("expected a JSON object, got {}", kind(raw))))?;
        let stage_raw = string_field(top, "lifecycleStage")?;
        let stage = LifecycleStage::parse(stage_raw).ok_or_else(|| {
            MalformedEvent(format!("unknown lifecycleStage {:?}", truncated(stage_raw)))
        })?;
        let details = top
            .get("executionDetails")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                MalformedEvent("`executionDetails` is missing or not an object".to_owned())
            })?;
        let hook_details = hook_details_of(top.get("hookDetails"))?;
        let event = Self {
            execution_id: string_field(top, "executionId")?.to_owned(),
            stage,
            deployment_arn: arn_field(top, "resourceArn", ":service-deployment/")?,
            service_arn: arn_field(details, "serviceArn", ":service/")?,
            target_revision_arn: arn_field(
                details,
                "targetServiceRevisionArn",
                ":service-revision/",
            )?,
            test_weights: weights_field(details, "testTrafficWeights")?,
            production_weights: weights_field(details, "productionTrafficWeights")?,
            hook_details,
        };
        Ok(event)
    }

    /// The weight (0–100) the traffic this stage shifts gives green, when the event says:
    /// `None` when the map lacks green, which ECS may legitimately send (an empty test map on a
    /// service without a test rule, for one).
    pub fn green_weight(&self) -> Option<f64> {
        self.shifted_weights()
            .get(&self.target_revision_arn)
            .copied()
    }

    /// The weights of the traffic this stage shifts (test traffic at TEST_TRAFFIC_SHIFT).
    pub fn shifted_weights(&self) -> &Weights {
        if self.stage == LifecycleStage::TestTrafficShift {
            &self.test_weights
        } else {
            &self.production_weights
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

fn string_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, MalformedEvent> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(MalformedEvent(format!("`{key}` is empty"))),
        Some(other) => Err(MalformedEvent(format!(
            "`{key}` must be a string, got {}",
            kind(other)
        ))),
        None => Err(MalformedEvent(format!("`{key}` is missing"))),
    }
}

fn arn_field(
    obj: &Map<String, Value>,
    key: &str,
    resource: &str,
) -> Result<String, MalformedEvent> {
    let value = string_field(obj, key)?;
    if !value.starts_with("arn:") || !value.contains(resource) || value.len() > 2048 {
        return Err(MalformedEvent(format!(
            "`{key}` is not an ECS ARN containing {resource:?}: {:?}",
            truncated(value)
        )));
    }
    Ok(value.to_owned())
}

fn weights_field(obj: &Map<String, Value>, key: &str) -> Result<Weights, MalformedEvent> {
    let map = match obj.get(key) {
        None | Some(Value::Null) => return Ok(Weights::new()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(MalformedEvent(format!(
                "`{key}` must be an object, got {}",
                kind(other)
            )));
        }
    };
    map.iter()
        .map(|(revision, weight)| {
            weight
                .as_f64()
                .filter(|w| (0.0..=100.0).contains(w))
                .map(|w| (revision.clone(), w))
                .ok_or_else(|| {
                    MalformedEvent(format!("`{key}` has a weight that is not a number 0-100"))
                })
        })
        .collect()
}

/// `hookDetails`: an object, or (as CloudFormation documents it: "a JSON object as a string")
/// a string holding one. Absent or null is empty.
pub fn hook_details_of(raw: Option<&Value>) -> Result<Map<String, Value>, MalformedEvent> {
    match raw {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(MalformedEvent(format!(
                "`hookDetails` is a string holding {}, not a JSON object",
                kind(&other)
            ))),
            Err(e) => Err(MalformedEvent(format!(
                "`hookDetails` is a string that is not JSON ({e}); give a JSON object"
            ))),
        },
        Some(other) => Err(MalformedEvent(format!(
            "`hookDetails` must be a JSON object (or a string holding one), got {}",
            kind(other)
        ))),
    }
}

/// What ECS reads back from a hook.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookAnswer {
    pub hook_status: HookStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_back_delay: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_details: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HookStatus {
    Succeeded,
    Failed,
    InProgress,
}

impl HookAnswer {
    pub fn succeeded() -> Self {
        Self {
            hook_status: HookStatus::Succeeded,
            call_back_delay: None,
            hook_details: None,
        }
    }

    pub fn failed() -> Self {
        Self {
            hook_status: HookStatus::Failed,
            call_back_delay: None,
            hook_details: None,
        }
    }

    /// Hold the deployment; ECS calls again after `delay` and passes `hook_details` back, so the
    /// configured settings are echoed as AWS's own sample does.
    pub fn in_progress(delay: Duration, hook_details: Map<String, Value>) -> Self {
        Self {
            hook_status: HookStatus::InProgress,
            call_back_delay: Some(delay.as_secs().max(1)),
            hook_details: Some(hook_details),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn forward_shift() -> Value {
        json!({
          "executionId": "f4fcae0f-9bec-41c6-ba87-0eaa0cef8af5",
          "lifecycleStage": "PRODUCTION_TRAFFIC_SHIFT",
          "resourceArn": "arn:aws:ecs:us-west-2:123456789012:service-deployment/my-cluster/my-service/EZe5RNVLH6PPzHXINuP28",
          "executionDetails": {
            "serviceArn": "arn:aws:ecs:us-west-2:123456789012:service/my-cluster/my-service",
            "targetServiceRevisionArn": "arn:aws:ecs:us-west-2:123456789012:service-revision/my-cluster/my-service/9313423515462893900",
            "testTrafficWeights": {},
            "productionTrafficWeights": {
              "arn:aws:ecs:us-west-2:123456789012:service-revision/my-cluster/my-service/9313423515462893900": 100,
              "arn:aws:ecs:us-west-2:123456789012:service-revision/my-cluster/my-service/1920498462936580504": 0
            }
          }
        })
    }

    #[test]
    fn parses_the_documented_production_shift_event() {
        let e = HookEvent::parse(&forward_shift()).unwrap();
        assert_eq!(e.stage, LifecycleStage::ProductionTrafficShift);
        assert!(e.target_revision_arn.ends_with("/9313423515462893900"));
        assert_eq!(e.green_weight(), Some(100.0));
        assert!(e.hook_details.is_empty());
    }

    #[test]
    fn hook_details_come_through() {
        let mut raw = forward_shift();
        raw["hookDetails"] = json!({"skewWindow": "3s"});
        let e = HookEvent::parse(&raw).unwrap();
        assert_eq!(e.hook_details["skewWindow"], "3s");
    }

    #[test]
    fn fractional_weights_parse_as_ecs_sends_them_for_linear_and_canary() {
        let mut raw = forward_shift();
        let green = raw["executionDetails"]["targetServiceRevisionArn"]
            .as_str()
            .unwrap()
            .to_owned();
        let weights = &mut raw["executionDetails"]["productionTrafficWeights"];
        let keys: Vec<String> = weights.as_object().unwrap().keys().cloned().collect();
        for key in keys {
            weights[&key] = json!(if key == green { 2.5 } else { 97.5 });
        }
        let e = HookEvent::parse(&raw).unwrap();
        assert_eq!(e.green_weight(), Some(2.5));
        assert_eq!(e.production_weights.values().sum::<f64>(), 100.0);
    }

    #[test]
    fn a_map_without_green_gives_no_green_weight_rather_than_an_error() {
        let mut raw = forward_shift();
        raw["lifecycleStage"] = json!("TEST_TRAFFIC_SHIFT");
        let e = HookEvent::parse(&raw).unwrap();
        assert_eq!(e.green_weight(), None);
    }

    #[test]
    fn hook_details_given_as_a_json_string_are_accepted_and_anything_else_is_refused() {
        let mut raw = forward_shift();
        raw["hookDetails"] = json!("{\"skewWindow\": \"3s\"}");
        let e = HookEvent::parse(&raw).unwrap();
        assert_eq!(e.hook_details["skewWindow"], "3s");
        for (bad, needle) in [
            (json!("[1, 2]"), "not a JSON object"),
            (json!("skewWindow=3s"), "not JSON"),
            (json!(7), "must be a JSON object"),
        ] {
            raw["hookDetails"] = bad;
            let err = HookEvent::parse(&raw).unwrap_err().to_string();
            assert!(err.contains(needle), "expected {needle:?} in {err}");
        }
    }

    #[test]
    fn malformed_events_name_the_problem() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "expected a JSON object"),
            (
                json!({"lifecycleStage": "PRODUCTION_TRAFFIC_SHIFT"}),
                "executionDetails",
            ),
            (
                {
                    let mut v = forward_shift();
                    v["lifecycleStage"] = json!("TELEPORT");
                    v
                },
                "unknown lifecycleStage",
            ),
            (
                {
                    let mut v = forward_shift();
                    v["resourceArn"] = json!("not-an-arn");
                    v
                },
                "resourceArn",
            ),
            (
                {
                    let mut v = forward_shift();
                    v["executionDetails"]["productionTrafficWeights"] = json!({"x": 101});
                    v
                },
                "weight",
            ),
            (
                {
                    let mut v = forward_shift();
                    v["executionDetails"]["productionTrafficWeights"] = json!([1]);
                    v
                },
                "productionTrafficWeights",
            ),
            (
                {
                    let mut v = forward_shift();
                    v["hookDetails"] = json!("x");
                    v
                },
                "hookDetails",
            ),
            (
                {
                    let mut v = forward_shift();
                    v.as_object_mut().unwrap().remove("executionId");
                    v
                },
                "executionId",
            ),
        ];
        for (raw, needle) in cases {
            let err = HookEvent::parse(&raw).unwrap_err().to_string();
            assert!(err.contains(needle), "expected {needle:?} in {err}");
        }
    }

    #[test]
    fn answers_serialise_as_ecs_expects() {
        assert_eq!(
            serde_json::to_value(HookAnswer::succeeded()).unwrap(),
            json!({"hookStatus": "SUCCEEDED"})
        );
        assert_eq!(
            serde_json::to_value(HookAnswer::failed()).unwrap(),
            json!({"hookStatus": "FAILED"})
        );
        let details = json!({"skewWindow": "1h"}).as_object().unwrap().clone();
        assert_eq!(
            serde_json::to_value(HookAnswer::in_progress(Duration::from_millis(200), details))
                .unwrap(),
            json!({"hookStatus": "IN_PROGRESS", "callBackDelay": 1, "hookDetails": {"skewWindow": "1h"}})
        );
    }
}
