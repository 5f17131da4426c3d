//! The one executor of listener changes. The hooks, the reconciler and the property tests hand
//! it the same thing: a plan whose priorities were chosen while deciding ([`crate::pins::place`]); it
//! creates each pin with its tags in one call, first those whose priority is free now, then
//! deletes, then creates those that take a priority a deletion freed; and reports what exists
//! now. A pin replaced by another (its targets changed) is thus never missing in between: a
//! request carrying its ID never falls through to production meanwhile.
//!
//! It makes no request when the plan changes nothing. A priority taken meanwhile (another
//! service's hook on the same listener) stops it early with [`Applied::priority_taken`]: the
//! caller observes the listener again and plans anew, since every priority was chosen against
//! the listener it read.

use std::collections::BTreeMap;
use std::future::Future;

use crate::DeploymentId;
use crate::aws::elb::{Elb, NewRule};
use crate::aws::{AwsError, AwsErrorKind};
use crate::pins::{PinTags, PlacedPin};

/// The two listener writes the executor needs: the seam that lets the property tests run the
/// product's executor against an in-memory listener.
pub trait ListenerWrites {
    /// Deletes a rule; a rule already gone is not an error.
    fn delete_rule(&self, rule_arn: &str) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// Creates a rule with its tags in one call and returns its ARN.
    fn create_rule(&self, rule: &NewRule) -> impl Future<Output = Result<String, AwsError>> + Send;
}

impl ListenerWrites for Elb {
    fn delete_rule(&self, rule_arn: &str) -> impl Future<Output = Result<(), AwsError>> + Send {
        Elb::delete_rule(self, rule_arn)
    }

    fn create_rule(&self, rule: &NewRule) -> impl Future<Output = Result<String, AwsError>> + Send {
        Elb::create_rule(self, rule)
    }
}

/// The listener changes of one plan.
#[derive(Debug, Clone, Copy)]
pub struct ListenerChanges<'a> {
    pub listener_arn: &'a str,
    /// The service the pins belong to, for their `skewguard:service` tag.
    pub service_arn: &'a str,
    /// Rules to delete, once the pins that need none of their priorities exist.
    pub delete: &'a [String],
    /// Pins to create, at the priorities chosen when planning.
    pub create: &'a [PlacedPin],
    /// The priorities of the rules to delete: a pin placed at one of them is created only
    /// after the deletions.
    pub freed: &'a [u32],
}

impl ListenerChanges<'_> {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.create.is_empty()
    }
}

/// What the executor did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The pins created, by deployment ID, in the order created.
    pub created: BTreeMap<DeploymentId, Vec<String>>,
    /// A priority was taken meanwhile: the remaining pins were not created.
    pub priority_taken: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "the listener has no room for another rule (ALB rule quota): {0}; remove unused rules or raise the quota"
    )]
    RuleQuota(AwsError),
    #[error(transparent)]
    Aws(AwsError),
}

/// Deletes, then creates; stops at the first error (the caller's retry starts from a fresh
/// observation, and every pin is tagged, so a partial run leaves nothing untracked).
pub async fn apply(
    listener: &impl ListenerWrites,
    changes: ListenerChanges<'_>,
) -> Result<Applied, ApplyError> {
    let mut applied = Applied::default();
    let (first, after): (Vec<&PlacedPin>, Vec<&PlacedPin>) = changes
        .create
        .iter()
        .partition(|pin| !changes.freed.contains(&pin.priority));
    create_pins(listener, &changes, &first, &mut applied).await?;
    if applied.priority_taken {
        return Ok(applied);
    }
    for arn in changes.delete {
        listener.delete_rule(arn).await.map_err(ApplyError::Aws)?;
        crate::metrics::record(|c| c.pins_removed += 1);
        tracing::info!(rule_arn = %arn, "pin removed");
    }
    create_pins(listener, &changes, &after, &mut applied).await?;
    Ok(applied)
}

/// Creates `pins` in order, each with its tags; stops at a priority taken meanwhile.
async fn create_pins(
    listener: &impl ListenerWrites,
    changes: &ListenerChanges<'_>,
    pins: &[&PlacedPin],
    applied: &mut Applied,
) -> Result<(), ApplyError> {
    for pin in pins {
        let rule = NewRule {
            listener_arn: changes.listener_arn.to_owned(),
            priority: pin.priority,
            conditions: pin.spec.conditions.clone(),
            action: pin.spec.action.clone(),
            tags: PinTags {
                service_arn: changes.service_arn.to_owned(),
                deployment_id: pin.spec.deployment_id.to_string(),
            },
        };
        match listener.create_rule(&rule).await {
            Ok(arn) => {
                crate::metrics::record(|c| c.pins_created += 1);
                tracing::info!(deployment_id = %pin.spec.deployment_id, priority = pin.priority, rule_arn = %arn, "pin created");
                applied
                    .created
                    .entry(pin.spec.deployment_id.clone())
                    .or_default()
                    .push(arn);
            }
            Err(err) if err.is("PriorityInUse") => {
                tracing::warn!(
                    priority = pin.priority,
                    "priority taken meanwhile; the listener is read again"
                );
                applied.priority_taken = true;
                break;
            }
            Err(err) if err.kind == AwsErrorKind::Quota => return Err(ApplyError::RuleQuota(err)),
            Err(err) => return Err(ApplyError::Aws(err)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::listener::{Condition, RuleAction, WeightedTarget};
    use crate::pins::PinSpec;

    /// Records every write; answers `PriorityInUse` for the priorities listed.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        taken: Vec<u32>,
    }

    impl ListenerWrites for Recorder {
        fn delete_rule(&self, rule_arn: &str) -> impl Future<Output = Result<(), AwsError>> + Send {
            self.calls
                .lock()
                .unwrap()
                .push(format!("delete {rule_arn}"));
            std::future::ready(Ok(()))
        }

        fn create_rule(
            &self,
            rule: &NewRule,
        ) -> impl Future<Output = Result<String, AwsError>> + Send {
            self.calls.lock().unwrap().push(format!(
                "create {} {}",
                rule.priority, rule.tags.deployment_id
            ));
            std::future::ready(if self.taken.contains(&rule.priority) {
                Err(AwsError::priority_taken())
            } else {
                Ok(format!("rule/{}", rule.priority))
            })
        }
    }

    fn pin(id: &str, priority: u32) -> PlacedPin {
        PlacedPin {
            spec: PinSpec {
                deployment_id: DeploymentId::parse(id).unwrap(),
                conditions: vec![Condition::HttpHeader {
                    name: "X-Deployment-ID".into(),
                    values: vec![id.into()],
                }],
                action: RuleAction::Forward(vec![WeightedTarget {
                    target_group_arn: "tg".into(),
                    weight: 1,
                }]),
            },
            priority,
        }
    }

    fn changes<'a>(delete: &'a [String], create: &'a [PlacedPin]) -> ListenerChanges<'a> {
        ListenerChanges {
            listener_arn: "listener/app/web/1/2",
            service_arn: "arn:aws:ecs:us-east-1:1:service/c/web",
            delete,
            create,
            freed: &[],
        }
    }

    async fn run(recorder: &Recorder, delete: &[String], create: &[PlacedPin]) -> Applied {
        apply(recorder, changes(delete, create)).await.unwrap()
    }

    #[tokio::test]
    async fn a_plan_that_changes_nothing_makes_no_request() {
        let recorder = Recorder::default();
        let applied = run(&recorder, &[], &[]).await;
        assert_eq!(applied, Applied::default());
        assert!(recorder.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn pins_at_free_priorities_come_before_deletions_and_are_created_tagged() {
        // A pin replaced by another is never missing in between: the new one exists before
        // the old one goes.
        let recorder = Recorder::default();
        let applied = run(
            &recorder,
            &["rule/old".into()],
            &[pin("v2", 98), pin("v1", 97)],
        )
        .await;
        assert_eq!(
            *recorder.calls.lock().unwrap(),
            ["create 98 v2", "create 97 v1", "delete rule/old"]
        );
        assert!(!applied.priority_taken);
        assert_eq!(
            applied.created[&DeploymentId::parse("v2").unwrap()],
            ["rule/98"]
        );
    }

    #[tokio::test]
    async fn a_pin_at_a_priority_a_deletion_frees_is_created_after_it() {
        let recorder = Recorder::default();
        let create = [pin("v2", 98), pin("v1", 99)];
        let delete = ["rule/99".to_owned()];
        let changes = ListenerChanges {
            freed: &[99],
            ..changes(&delete, &create)
        };
        apply(&recorder, changes).await.unwrap();
        assert_eq!(
            *recorder.calls.lock().unwrap(),
            ["create 98 v2", "delete rule/99", "create 99 v1"]
        );
    }

    #[tokio::test]
    async fn a_priority_taken_meanwhile_stops_and_says_so() {
        let recorder = Recorder {
            taken: vec![98],
            ..Recorder::default()
        };
        let applied = run(&recorder, &[], &[pin("v2", 98), pin("v1", 97)]).await;
        assert!(applied.priority_taken);
        assert!(applied.created.is_empty());
        assert_eq!(
            *recorder.calls.lock().unwrap(),
            ["create 98 v2"],
            "nothing after it"
        );
    }
}
