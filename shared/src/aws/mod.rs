//! The narrow AWS operations skewguard needs, each behind a named function, and the
//! classification of what AWS answered.

pub mod cloudwatch;
pub mod ecs;
pub mod elb;
pub mod ledger_store;
#[cfg(test)]
mod mock_tests;
#[cfg(test)]
mod retirement_mock_tests;
pub mod sweep_queue;

use std::error::Error;
use std::sync::Arc;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::result::SdkError;
pub use aws_smithy_types::error::display::DisplayErrorContext;

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

/// An AWS call that failed: the operation, AWS's error code and its kind. The error behind it
/// (the SDK's, with AWS's message and request ID) is its [`Error::source`]; print the whole
/// chain with [`DisplayErrorContext`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("AWS {operation} failed ({code})")]
pub struct AwsError {
    pub operation: &'static str,
    pub code: String,
    pub kind: AwsErrorKind,
    /// Shared, so that the error stays `Clone` as the retry passes it on.
    source: Arc<dyn Error + Send + Sync>,
}

impl AwsError {
    /// A failure skewguard concludes from an answer AWS gave without an error (no SDK error
    /// behind it): `why` is its source.
    pub fn concluded(operation: &'static str, code: &str, kind: AwsErrorKind, why: &str) -> Self {
        Self {
            operation,
            code: code.to_owned(),
            kind,
            source: Arc::from(Box::<dyn Error + Send + Sync>::from(why)),
        }
    }

    /// `PriorityInUse`, as ELBv2 answers when a rule priority was taken meanwhile: a conflict.
    pub fn priority_taken() -> Self {
        Self::concluded(
            "CreateRule",
            "PriorityInUse",
            AwsErrorKind::Conflict,
            "a pin's priority was taken meanwhile",
        )
    }

    pub fn is(&self, code: &str) -> bool {
        self.code == code
    }
}

/// Classifies what the SDK answered by AWS's error code, keeping the SDK error as the source.
/// An answer without an error code and with a 5xx status (a server error page from something
/// in front of the service, which no AWS error model describes) is transient, as the SDKs'
/// own retry classifiers treat a 5xx.
pub(crate) fn classify<E>(
    operation: &'static str,
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> AwsError
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
{
    let (code, kind) = match &err {
        SdkError::ServiceError(service) => match service.err().code() {
            Some(code) => (code.to_owned(), kind_of_code(code)),
            None if service.raw().status().is_server_error() => (
                format!("HTTP {}", service.raw().status().as_u16()),
                AwsErrorKind::Transient,
            ),
            None => ("Unknown".to_owned(), AwsErrorKind::Invalid),
        },
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ("Unreachable".to_owned(), AwsErrorKind::Transient)
        }
        _ => ("ClientError".to_owned(), AwsErrorKind::Invalid),
    };
    AwsError {
        operation,
        code,
        kind,
        source: Arc::new(err),
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
        | "ClusterNotFoundException"
        | "QueueDoesNotExist"
        | "AWS.SimpleQueueService.NonExistentQueue" => AwsErrorKind::NotFound,
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
