//! The one retry policy of the mesh: exponential backoff with jitter
//! (`backon`). Every wait between two attempts of something that may work in a
//! moment (a JetStream write during a leader election, a consumer or a watch
//! after a reconnect) comes from here, so the mesh backs off the same way
//! everywhere and tests can reason about one shape.

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use std::future::Future;
use std::time::Duration;

/// How to space attempts: from `min`, doubling up to `max`, with jitter,
/// `attempts` times in all (`None`: without end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min: Duration,
    pub max: Duration,
    pub attempts: Option<usize>,
}

impl Policy {
    /// One write that must land soon (a result, an event): 50 ms doubling
    /// to 1 s, six attempts, about 2 s in all. What still fails is then the
    /// caller's to report.
    pub const WRITE: Policy = Policy {
        min: Duration::from_millis(50),
        max: Duration::from_secs(1),
        attempts: Some(6),
    };

    /// A loop that restarts (a consumer, a KV watch): 100 ms doubling to
    /// 5 s, for as long as the loop runs.
    pub const RESTART: Policy = Policy {
        min: Duration::from_millis(100),
        max: Duration::from_secs(5),
        attempts: None,
    };

    /// A write kept up in the background after [`Policy::WRITE`] ran out
    /// (and an alert went out): 1 s doubling to 30 s, without end.
    pub const PERSIST: Policy = Policy {
        min: Duration::from_secs(1),
        max: Duration::from_secs(30),
        attempts: None,
    };

    fn builder(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter();
        match self.attempts {
            // backon counts retries, not attempts.
            Some(n) => b.with_max_times(n.saturating_sub(1)),
            None => b.without_max_times(),
        }
    }

    /// The wait before attempt `n + 1` after `n` attempts (1-based), without
    /// jitter: for waits someone else keeps (a nak's delay in JetStream).
    pub fn nth(&self, n: u32) -> Duration {
        let doubled = self
            .min
            .saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(30)));
        doubled.min(self.max)
    }

    /// The waits between attempts, in order; `None` once the policy is spent.
    /// Start a new one to reset it (after a success).
    pub fn delays(&self) -> Delays {
        Delays(self.builder().build())
    }

    /// Runs `op` until it succeeds, fails with an error `retryable` refuses,
    /// or the policy is spent; returns the last outcome. `what` names the
    /// operation in the debug log of each retry.
    pub async fn retry<T, E, Fut>(
        &self,
        what: &str,
        op: impl FnMut() -> Fut,
        retryable: impl FnMut(&E) -> bool,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        // Boxed: the retry's state holds the operation's future, and large
        // futures on the stack of a debug build are what overflows it.
        Box::pin(
            op.retry(self.builder())
                .sleep(tokio::time::sleep)
                .when(retryable)
                .notify(|error, after| {
                    tracing::debug!(%error, ?after, "{what} failed; retrying.");
                }),
        )
        .await
    }
}

/// The waits of one run of a [`Policy`].
pub struct Delays(backon::ExponentialBackoff);

impl Iterator for Delays {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl Delays {
    /// The next wait; the policy's longest once a finite one is spent.
    pub fn next_or_max(&mut self, policy: &Policy) -> Duration {
        self.next().unwrap_or(policy.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_a_finite_policy_ends() {
        let d: Vec<Duration> = Policy::WRITE.delays().collect();
        // Six attempts: five waits.
        assert_eq!(d.len(), 5, "{d:?}");
        assert!(d.iter().all(|d| *d <= Policy::WRITE.max * 2), "{d:?}");
        let mut endless = Policy::RESTART.delays();
        let late: Vec<Duration> = (&mut endless).skip(50).take(3).collect();
        assert_eq!(late.len(), 3);
        assert!(late.iter().all(|d| *d >= Policy::RESTART.max), "{late:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_a_permanent_error_and_when_spent() {
        let mut calls = 0;
        let r: Result<(), String> = Policy::WRITE
            .retry(
                "op",
                || {
                    calls += 1;
                    async { Err::<(), _>("permanent".to_string()) }
                },
                |e| e != "permanent",
            )
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
        let mut calls = 0;
        let r: Result<(), String> = Policy::WRITE
            .retry(
                "op",
                || {
                    calls += 1;
                    async { Err::<(), _>("transient".to_string()) }
                },
                |_| true,
            )
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 6);
    }
}
