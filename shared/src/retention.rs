//! `retention: service`: the start of a retention copy of the version production just left.
//!
//! The copy is an ordinary ECS service running the previous version's task definition behind
//! a target group of its own. Its names are deterministic ([`service_name`],
//! [`target_group_name`]) so that a create retried after a crash or a lost answer finds the
//! resource the first attempt made, and everything it consists of carries skewguard's tags
//! ([`tags`]) so that IAM lets skewguard delete only what it created.

use crate::DeploymentId;

/// Tag on everything skewguard creates; IAM scopes creation and deletion to it.
pub const TAG_MANAGED: &str = "skewguard:managed";
/// Tag naming the user's service (its name, the last part of its ARN).
pub const TAG_SERVICE: &str = "skewguard:service";
/// Tag naming the retained version's deployment ID.
pub const TAG_DEPLOYMENT_ID: &str = "skewguard:deployment-id";

/// ECS service names: at most 255 letters, digits, hyphens and underscores.
pub const MAX_SERVICE_NAME_LEN: usize = 255;
/// ELB target group names: at most 32 alphanumerics and hyphens.
pub const MAX_TARGET_GROUP_NAME_LEN: usize = 32;

/// The tags of a retention copy's service and target group, as (key, value) pairs.
pub fn tags(service_arn: &str, deployment_id: &DeploymentId) -> [(&'static str, String); 3] {
    [
        (TAG_MANAGED, "true".to_owned()),
        (TAG_SERVICE, name_of(service_arn).to_owned()),
        (TAG_DEPLOYMENT_ID, deployment_id.as_str().to_owned()),
    ]
}

/// The last part of a service ARN (`arn:...:service/cluster/web` → `web`).
pub fn name_of(service_arn: &str) -> &str {
    service_arn.rsplit('/').next().unwrap_or(service_arn)
}

/// The retention service's name: `<service name>-sg-<deployment ID>`.
///
/// ECS names allow no `.` (which deployment IDs may contain) and at most 255 characters: a
/// `.` becomes `-`, and a name that had to be changed that way or shortened ends in `-` and 8
/// hex digits of [`copy_hash`], so two deployment IDs never share a retention service.
pub fn service_name(service_arn: &str, deployment_id: &DeploymentId) -> String {
    let id = deployment_id.as_str();
    let sanitized: String = id.chars().map(|c| if c == '.' { '-' } else { c }).collect();
    let service: String = name_of(service_arn)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    let plain = format!("{service}-sg-{sanitized}");
    if sanitized == id && plain.len() <= MAX_SERVICE_NAME_LEN {
        return plain;
    }
    let suffix = format!("-{:08x}", copy_hash(service_arn, deployment_id) >> 32);
    // Keep the deployment ID readable first: shorten the service name before the ID.
    let room = MAX_SERVICE_NAME_LEN - suffix.len() - "-sg-".len();
    let id_part: String = sanitized.chars().take(room.saturating_sub(1)).collect();
    let service_part: String = service
        .chars()
        .take(room.saturating_sub(id_part.len()).max(1))
        .collect();
    format!("{service_part}-sg-{id_part}{suffix}")
}

/// The retention target group's name: `sg-` and 16 hex digits of [`copy_hash`] (19 of the 32
/// characters ELB allows).
pub fn target_group_name(service_arn: &str, deployment_id: &DeploymentId) -> String {
    format!("sg-{:016x}", copy_hash(service_arn, deployment_id))
}

/// A stable 64-bit hash of (service ARN, deployment ID): FNV-1a, whose constants are fixed by
/// its specification, so the names it yields never change between releases (std's hashers
/// make no such promise).
pub fn copy_hash(service_arn: &str, deployment_id: &DeploymentId) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    service_arn
        .bytes()
        .chain([0u8])
        .chain(deployment_id.as_str().bytes())
        .fold(OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "arn:aws:ecs:us-east-1:123456789012:service/prod/web";

    fn id(raw: &str) -> DeploymentId {
        DeploymentId::parse(raw).unwrap()
    }

    #[test]
    fn names_are_deterministic_and_distinct_per_version_and_service() {
        assert_eq!(service_name(SVC, &id("a1b2")), "web-sg-a1b2");
        let tg = target_group_name(SVC, &id("a1b2"));
        assert_eq!(tg, target_group_name(SVC, &id("a1b2")));
        assert_eq!(tg.len(), 19);
        assert!(tg.starts_with("sg-"));
        assert!(tg[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(tg, target_group_name(SVC, &id("a1b3")));
        let other = "arn:aws:ecs:us-east-1:123456789012:service/staging/web";
        assert_ne!(tg, target_group_name(other, &id("a1b2")));
    }

    #[test]
    fn fnv_1a_matches_its_specification() {
        // The FNV-1a 64 of the empty input is its offset basis; of "a" a published value.
        let hash = |bytes: &[u8]| {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(copy_hash("a", &id("b")), hash(b"a\0b"));
    }

    #[test]
    fn service_names_fit_ecs_even_for_dotted_or_long_ids() {
        let dotted = service_name(SVC, &id("v1.2"));
        let underscored = service_name(SVC, &id("v1_2"));
        assert!(dotted.starts_with("web-sg-v1-2-"), "{dotted}");
        assert_ne!(dotted, service_name(SVC, &id("v1-2")));
        assert_eq!(underscored, "web-sg-v1_2");
        let long_service = format!(
            "arn:aws:ecs:us-east-1:123456789012:service/prod/{}",
            "s".repeat(255)
        );
        let long_id = id(&"d".repeat(128));
        let name = service_name(&long_service, &long_id);
        assert!(name.len() <= MAX_SERVICE_NAME_LEN, "{}", name.len());
        assert!(
            name.contains(&"d".repeat(128)),
            "the ID stays whole: {name}"
        );
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        );
        assert_ne!(name, service_name(&long_service, &id(&"d".repeat(127))));
    }

    #[test]
    fn tags_name_the_service_and_the_version() {
        let tags = tags(SVC, &id("a1b2"));
        assert_eq!(
            tags,
            [
                (TAG_MANAGED, "true".to_owned()),
                (TAG_SERVICE, "web".to_owned()),
                (TAG_DEPLOYMENT_ID, "a1b2".to_owned()),
            ]
        );
    }
}
