//! The narrow AWS operations skewguard needs, each behind a named function, and the
//! classification of what AWS answered.

pub mod ecs;
pub mod elb;
pub mod ledger_store;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;

/// What kind of failure an AWS call had, by AWS error code (never by message text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    /// Rate limited after the SDK's own retries.
    Throttling,
    AccessDenied,
    NotFound,
    /// A conditional write lost a race, or a rule priority was taken meanwhile.
    Conflict,
    /// An account or resource quota is exhausted.
    Quota,
    /// Timeouts, dropped connections, 5xx: worth another try later.
    Transient,
    /// The request itself was rejected.
    Invalid,
}

impl AwsErrorKind {
    /// The `error_kind` logs and metrics give an AWS failure of this kind.
    pub fn error_kind(self) -> &'static str {
        match self {
            AwsErrorKind::Throttling => "AwsThrottling",
            AwsErrorKind::AccessDenied => "AwsAccessDenied",
            AwsErrorKind::NotFound => "AwsNotFound",
            AwsErrorKind::Conflict => "AwsConflict",
            AwsErrorKind::Quota => "AwsQuota",
            AwsErrorKind::Transient => "AwsUnavailable",
            AwsErrorKind::Invalid => "AwsRejected",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("AWS {operation} failed: {code}: {message}")]
pub struct AwsError {
    pub operation: &'static str,
    pub code: String,
    pub message: String,
    pub kind: AwsErrorKind,
}

impl AwsError {
    /// `PriorityInUse`, as ELBv2 answers when a rule priority was taken meanwhile: a conflict.
    pub fn priority_taken() -> Self {
        Self {
            operation: "CreateRule",
            code: "PriorityInUse".to_owned(),
            message: "a pin's priority was taken meanwhile".to_owned(),
            kind: AwsErrorKind::Conflict,
        }
    }

    pub fn is(&self, code: &str) -> bool {
        self.code == code
    }
}

pub(crate) fn classify<E, R>(operation: &'static str, err: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let code = inner.code().unwrap_or("Unknown").to_owned();
            let message = inner
                .message()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            let kind = kind_of_code(&code);
            AwsError {
                operation,
                code,
                message,
                kind,
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            AwsError {
                operation,
                code: "Unreachable".to_owned(),
                message: aws_smithy_types::error::display::DisplayErrorContext(&err)
                    .to_string()
                    .chars()
                    .take(300)
                    .collect(),
                kind: AwsErrorKind::Transient,
            }
        }
        _ => AwsError {
            operation,
            code: "ClientError".to_owned(),
            message: aws_smithy_types::error::display::DisplayErrorContext(&err)
                .to_string()
                .chars()
                .take(300)
                .collect(),
            kind: AwsErrorKind::Invalid,
        },
    }
}

pub(crate) fn kind_of_code(code: &str) -> AwsErrorKind {
    match code {
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded"
        | "RequestThrottled"
        | "LimitExceededException" => AwsErrorKind::Throttling,
        "AccessDenied"
        | "AccessDeniedException"
        | "UnauthorizedOperation"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException" => AwsErrorKind::AccessDenied,
        "RuleNotFound"
        | "ListenerNotFound"
        | "TargetGroupNotFound"
        | "ResourceNotFoundException"
        | "ServiceNotFoundException"
        | "ClusterNotFoundException" => AwsErrorKind::NotFound,
        "PriorityInUse"
        | "ConditionalCheckFailedException"
        | "TransactionCanceledException"
        | "TransactionConflictException" => AwsErrorKind::Conflict,
        "TooManyRules" | "TooManyTargetGroups" | "TooManyTags" | "TooManyActions" => {
            AwsErrorKind::Quota
        }
        "InternalFailure"
        | "InternalError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "ServerException"
        | "InternalServerError" => AwsErrorKind::Transient,
        _ => AwsErrorKind::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        assert_eq!(kind_of_code("Throttling"), AwsErrorKind::Throttling);
        assert_eq!(
            kind_of_code("ThrottlingException"),
            AwsErrorKind::Throttling
        );
        assert_eq!(kind_of_code("AccessDenied"), AwsErrorKind::AccessDenied);
        assert_eq!(kind_of_code("PriorityInUse"), AwsErrorKind::Conflict);
        assert_eq!(kind_of_code("TooManyRules"), AwsErrorKind::Quota);
        assert_eq!(kind_of_code("RuleNotFound"), AwsErrorKind::NotFound);
        assert_eq!(kind_of_code("ValidationError"), AwsErrorKind::Invalid);
    }
}
