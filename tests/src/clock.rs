//! The world's clock: the time the data plane stamps its metrics with and the CloudWatch
//! stand-in answers in, which may run ahead of the machine's clock so that a demo or a test shows
//! "idle for 30 minutes" in seconds.
//!
//! World time is the machine's time plus how far ahead the world is (`elapsed × (scale − 1) +
//! jumps`): [`WorldClock::real`] is the machine's clock
//! (scale 1, no jump); [`WorldClock::scaled`] runs `scale` times faster from now on;
//! [`WorldClock::advance`] jumps ahead at once. It never runs backwards.
//!
//! skewguard itself reads the machine's clock (`OffsetDateTime::now_utc`). The CloudWatch
//! stand-in ([`crate::cloudwatch`]) therefore takes the times in a request as the caller's, shifts
//! them by [`WorldClock::ahead`] (how far world time is ahead of the machine's clock right now),
//! and shifts the timestamps of its answer back: a caller asking for "the last 30 minutes" gets
//! the last 30 minutes of world time, stamped as if they were its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug)]
struct Inner {
    /// When the current scale took effect.
    started: Instant,
    /// How far ahead world time was then.
    base_ahead: Duration,
    scale: f64,
    jumped: Duration,
}

/// A shared world clock; clones read the same time.
#[derive(Debug, Clone)]
pub struct WorldClock(Arc<Mutex<Inner>>);

impl Default for WorldClock {
    fn default() -> Self {
        Self::real()
    }
}

impl WorldClock {
    /// The machine's clock.
    pub fn real() -> WorldClock {
        Self::scaled(1.0)
    }

    /// A clock that runs `scale` times as fast as the machine's from now on (`60.0`: a world
    /// minute per second); scales below 1 are taken as 1.
    pub fn scaled(scale: f64) -> WorldClock {
        WorldClock(Arc::new(Mutex::new(Inner {
            started: Instant::now(),
            base_ahead: Duration::ZERO,
            scale: scale.max(1.0),
            jumped: Duration::ZERO,
        })))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// World time now.
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + self.ahead()
    }

    /// Jumps world time ahead by `by` at once.
    pub fn advance(&self, by: Duration) {
        self.inner().jumped += by;
    }

    /// From now on, world time runs `scale` times as fast as the machine's clock (it continues
    /// from where it is; scales below 1 are taken as 1).
    pub fn set_scale(&self, scale: f64) {
        let ahead = self.ahead();
        let mut inner = self.inner();
        inner.started = Instant::now();
        inner.base_ahead = ahead;
        inner.jumped = Duration::ZERO;
        inner.scale = scale.max(1.0);
    }

    /// How many world seconds pass per real second.
    pub fn scale(&self) -> f64 {
        self.inner().scale
    }

    /// How far world time is ahead of the machine's clock right now, in whole milliseconds
    /// (exactly zero for a real clock that never jumped).
    pub fn ahead(&self) -> Duration {
        let inner = self.inner();
        let ahead =
            inner.base_ahead + inner.started.elapsed().mul_f64(inner.scale - 1.0) + inner.jumped;
        Duration::from_millis(ahead.as_millis() as u64)
    }

    /// A time read from the machine's clock (a caller's), as world time.
    pub fn to_world(&self, caller: SystemTime) -> SystemTime {
        caller + self.ahead()
    }

    /// A world time, as the machine's clock would read it.
    pub fn to_caller(&self, world: SystemTime) -> SystemTime {
        world
            .checked_sub(self.ahead())
            .unwrap_or(std::time::UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_clock_runs_ahead_and_jumps_and_translates_both_ways() {
        let real = WorldClock::real();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(real.ahead(), Duration::ZERO);

        let fast = WorldClock::scaled(600.0);
        std::thread::sleep(Duration::from_millis(100));
        // 0.1 s real is at least a minute of world time.
        assert!(
            fast.ahead() >= Duration::from_secs(59),
            "{:?}",
            fast.ahead()
        );
        fast.advance(Duration::from_secs(1800));
        assert!(fast.ahead() >= Duration::from_secs(1859));
        let caller = SystemTime::now();
        let world = fast.to_world(caller);
        let back = fast.to_caller(world);
        let error = back.duration_since(caller).unwrap_or_else(|e| e.duration());
        // Only the time between the two reads separates them (600 × a few microseconds).
        assert!(error < Duration::from_millis(500), "{error:?}");
    }
}
