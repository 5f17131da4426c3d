//! Deployment IDs: the value a frontend sends to be pinned to the backend it was built against.

use std::fmt;

/// ALB condition values are capped at 128 characters.
pub const MAX_DEPLOYMENT_ID_LEN: usize = 128;

/// A validated deployment ID in canonical (lower-case) form.
///
/// ALB header and query matching is case-insensitive, so `ABC` and `abc` would be routed by the
/// same rule: they are the same ID here too. The charset excludes everything with a meaning in a
/// rule value (`*`, `?` wildcards), in a cookie (`;`, `=`, `,`, spaces) or in a header (control
/// characters), so a pin rule can only ever match its own ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentId(String);

/// Why a value is not a deployment ID; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDeploymentId {
    /// An empty value.
    #[error("deployment ID is empty")]
    Empty,
    #[error(
        "deployment ID is {len} characters long; ALB rule values allow at most {MAX_DEPLOYMENT_ID_LEN}"
    )]
    /// Longer than [`MAX_DEPLOYMENT_ID_LEN`] characters.
    TooLong {
        /// Its length in characters.
        len: usize,
    },
    #[error(
        "deployment ID {shown} contains {found:?}; only letters, digits, '.', '_' and '-' are allowed (no wildcards, spaces or control characters)"
    )]
    /// A character outside letters, digits, `.`, `_` and `-`.
    BadCharacter {
        /// The value's first 40 characters, quoted, control characters escaped (safe to log).
        shown: String,
        /// The first character not allowed.
        found: char,
    },
}

impl DeploymentId {
    /// Validates `raw` and returns its canonical (lower-case) form.
    pub fn parse(raw: &str) -> Result<Self, InvalidDeploymentId> {
        if raw.is_empty() {
            return Err(InvalidDeploymentId::Empty);
        }
        let len = raw.chars().count();
        if len > MAX_DEPLOYMENT_ID_LEN {
            return Err(InvalidDeploymentId::TooLong { len });
        }
        if let Some(found) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidDeploymentId::BadCharacter {
                shown: shown_safely(raw),
                found,
            });
        }
        Ok(Self(raw.to_ascii_lowercase()))
    }

    /// The canonical (lower-case) form, as stored and as pins match it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Escapes control characters so that a hostile ID cannot forge log lines or terminal output.
fn shown_safely(raw: &str) -> String {
    let short: String = raw.chars().take(40).collect();
    format!("{short:?}")
}

impl fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DeploymentId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_shas_and_tags_are_accepted_and_lower_cased() {
        let id = DeploymentId::parse("9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B").unwrap();
        assert_eq!(id.as_str(), "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b");
        assert_eq!(
            DeploymentId::parse("v1.2.3_rc-1").unwrap().as_str(),
            "v1.2.3_rc-1"
        );
    }

    #[test]
    fn ids_differing_only_in_case_are_the_same_id() {
        assert_eq!(
            DeploymentId::parse("AbC123").unwrap(),
            DeploymentId::parse("abc123").unwrap()
        );
    }

    #[test]
    fn empty_and_over_long_ids_are_rejected() {
        assert_eq!(DeploymentId::parse(""), Err(InvalidDeploymentId::Empty));
        assert!(DeploymentId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(
            DeploymentId::parse(&"a".repeat(129)),
            Err(InvalidDeploymentId::TooLong { len: 129 })
        );
    }

    #[test]
    fn wildcards_separators_unicode_and_control_characters_are_rejected() {
        for bad in [
            "abc*",
            "a?c",
            "a b",
            "a;b",
            "a=b",
            "a,b",
            "a\r\nX-Evil: 1",
            "é",
            "a\u{0}",
            "a/b",
        ] {
            let err = DeploymentId::parse(bad).unwrap_err();
            assert!(
                matches!(err, InvalidDeploymentId::BadCharacter { .. }),
                "{bad:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn error_message_escapes_control_characters() {
        let msg = DeploymentId::parse("x\nINJECTED").unwrap_err().to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("\\n"), "{msg}");
    }
}
