//! The one retry policy of every pipeline (hook stages, reconciler runs): after a lost race the
//! whole invocation starts again from a fresh observation, never from what it read before.

use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::aws::AwsErrorKind;

/// Observe, decide, apply and commit again this many times when another writer got there first.
pub const MAX_ATTEMPTS: u32 = 6;

/// How long a pipeline keeps starting over after AWS throttled it or failed transiently (5xx,
/// timeouts, dropped connections) beyond the SDK's own retries: a throttling storm of a few
/// seconds must not roll a good deployment back. Well inside the functions' 120 s timeout even
/// when the last attempt's calls run into the SDK's 40 s operation timeout.
pub const TRANSIENT_RETRY_BUDGET: Duration = Duration::from_secs(20);

/// The same budget during a rollback, where ECS calls the hook again shortly anyway (see
/// `hook::MAX_ROLLBACK_RETRIES`): each call gives up sooner and leaves the waiting to ECS.
pub const ROLLBACK_TRANSIENT_RETRY_BUDGET: Duration = Duration::from_secs(5);

/// Why an attempt failed, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Another writer changed the ledger or the listener (a conditional write or a rule
    /// priority lost): worth deciding again at once, a bounded number of times.
    Conflict,
    /// Throttling or a transient AWS failure: worth starting over a little later, within
    /// [`TRANSIENT_RETRY_BUDGET`].
    Transient,
    /// Anything else: retrying would fail the same way.
    Final,
}

impl Failure {
    /// How an AWS failure of this kind is retried: a lost conditional write or rule priority is
    /// a conflict; throttling and 5xx/timeouts that outlasted the SDK's own retries are
    /// transient; the rest (denied, not found, rejected, quota) would fail the same way again.
    pub fn of_aws(kind: AwsErrorKind) -> Failure {
        match kind {
            AwsErrorKind::Conflict => Failure::Conflict,
            AwsErrorKind::Throttling | AwsErrorKind::Transient => Failure::Transient,
            AwsErrorKind::AccessDenied
            | AwsErrorKind::NotFound
            | AwsErrorKind::Quota
            | AwsErrorKind::Invalid => Failure::Final,
        }
    }
}

/// Counts one pipeline's attempts and says how long to wait before the next.
#[derive(Debug)]
pub struct Retries {
    started: Instant,
    budget: Duration,
    conflicts: u32,
    transient: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Self::new()
    }
}

impl Retries {
    pub fn new() -> Self {
        Self::with_budget(TRANSIENT_RETRY_BUDGET)
    }

    /// Retries whose transient failures may take up to `budget` in all.
    pub fn with_budget(budget: Duration) -> Self {
        Self {
            started: Instant::now(),
            budget,
            conflicts: 0,
            transient: 0,
        }
    }

    /// Attempts made so far that lost a race.
    pub fn conflicts(&self) -> u32 {
        self.conflicts
    }

    /// After a failed attempt: how long to wait before observing again, or `None` to give up.
    pub fn next_wait(&mut self, failure: Failure) -> Option<Duration> {
        match failure {
            Failure::Conflict => {
                self.conflicts += 1;
                (self.conflicts < MAX_ATTEMPTS).then(|| backoff(self.conflicts))
            }
            Failure::Transient => {
                self.transient += 1;
                let wait = backoff(self.transient + 2).min(Duration::from_secs(5));
                (self.started.elapsed() + wait <= self.budget).then_some(wait)
            }
            Failure::Final => None,
        }
    }
}

/// The one retry loop of every pipeline: runs `attempt` until it succeeds, starting over from
/// a fresh observation after each lost race or transient failure as [`Retries`] allows;
/// `on_retry` hears of each failure that is retried. A run that keeps losing races ends with
/// `contention(conflicts)`; any other failure that is not retried ends it with that error.
pub async fn from_fresh_observations<T, E, Attempt>(
    mut retries: Retries,
    mut attempt: impl FnMut() -> Attempt,
    failure_of: impl Fn(&E) -> Failure,
    mut on_retry: impl FnMut(&E, Failure),
    contention: impl FnOnce(u32) -> E,
) -> Result<T, E>
where
    Attempt: std::future::Future<Output = Result<T, E>>,
{
    loop {
        let err = match attempt().await {
            Ok(done) => return Ok(done),
            Err(err) => err,
        };
        let failure = failure_of(&err);
        match retries.next_wait(failure) {
            Some(wait) => {
                on_retry(&err, failure);
                tokio::time::sleep(wait).await;
            }
            None if failure == Failure::Conflict => return Err(contention(retries.conflicts())),
            None => return Err(err),
        }
    }
}

/// Jittered exponential backoff: 50 ms, 100 ms, 200 ms … (at most 1.6 s) plus up to 50 ms.
pub fn backoff(attempt: u32) -> Duration {
    let jitter = OffsetDateTime::now_utc().nanosecond() as u64 % 50;
    Duration::from_millis(50 * (1 << (attempt.max(1) - 1).min(5)) + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_retried_a_bounded_number_of_times_and_final_errors_never() {
        let mut retries = Retries::new();
        let waits: Vec<_> = (0..MAX_ATTEMPTS)
            .map(|_| retries.next_wait(Failure::Conflict))
            .collect();
        assert!(
            waits[..(MAX_ATTEMPTS - 1) as usize]
                .iter()
                .all(Option::is_some)
        );
        assert_eq!(waits.last(), Some(&None), "gives up after {MAX_ATTEMPTS}");
        assert_eq!(Retries::new().next_wait(Failure::Final), None);
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        assert!(backoff(1) < Duration::from_millis(100));
        assert!(backoff(3) >= Duration::from_millis(200));
        assert!(backoff(40) < Duration::from_millis(1_700));
    }
}
