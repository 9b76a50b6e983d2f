//! What keeps one provider healthy from this process's side: a circuit
//! breaker, the cool-down a 429 asks for, requests and tokens per minute,
//! and the calls in flight.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a provider is not called now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its breaker is open (or half-open with its one trial call in flight).
    CircuitOpen(Duration),
    /// It answered 429 with a `Retry-After` that has not passed.
    CoolingDown(Duration),
    /// This process reached its requests or tokens per minute.
    LocalRateLimit(Duration),
}

impl Skip {
    pub fn outcome(self) -> &'static str {
        match self {
            Skip::CircuitOpen(_) => "circuit_open",
            Skip::CoolingDown(_) => "cooling_down",
            Skip::LocalRateLimit(_) => "local_rate_limit",
        }
    }

    /// When calling might work again.
    pub fn wait(self) -> Duration {
        match self {
            Skip::CircuitOpen(d) | Skip::CoolingDown(d) | Skip::LocalRateLimit(d) => d,
        }
    }
}

/// The breaker's state as the `jetmesh_llm_breaker_open` gauge and the
/// tests see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Default)]
struct State {
    /// Consecutive failures.
    failures: u32,
    /// Open until then; after it, one trial call (half-open).
    open_until: Option<Instant>,
    /// The half-open trial call in flight, since when. A trial whose caller
    /// went away (its future dropped) never reports; after `probe_ttl`
    /// another call may try.
    probing: Option<Instant>,
    /// A 429's `Retry-After`.
    cooling_until: Option<Instant>,
    /// When the calls of the last minute started.
    requests: VecDeque<Instant>,
    /// The tokens of the last minute, stamped when they were spent.
    tokens: VecDeque<(Instant, u64)>,
}

/// One provider's guard, shared by every call of the process.
#[derive(Debug)]
pub struct Guard {
    state: Mutex<State>,
    slots: Arc<Semaphore>,
    failures_to_open: u32,
    cooldown: Duration,
    /// How long a trial call may take (the provider's call timeout).
    probe_ttl: Duration,
    rpm: u32,
    tpm: u64,
}

const MINUTE: Duration = Duration::from_secs(60);

/// The longest a provider is skipped for on its own word (`Retry-After`).
pub const MAX_COOLING: Duration = Duration::from_secs(600);

impl Guard {
    pub fn new(
        max_concurrent: usize,
        failures_to_open: u32,
        cooldown: Duration,
        probe_ttl: Duration,
        rpm: u32,
        tpm: u64,
    ) -> Guard {
        Guard {
            state: Mutex::new(State::default()),
            slots: Arc::new(Semaphore::new(max_concurrent)),
            failures_to_open: failures_to_open.max(1),
            cooldown,
            probe_ttl,
            rpm,
            tpm,
        }
    }

    /// Whether a call may start now; when it may, it is counted against
    /// the per-minute limits and, if the breaker was open, it becomes the
    /// one trial call.
    pub fn admit(&self, now: Instant) -> Result<(), Skip> {
        let mut s = self.state.lock().expect("llm guard");
        if let Some(until) = s.open_until {
            if now < until {
                return Err(Skip::CircuitOpen(until - now));
            }
            if let Some(since) = s.probing {
                let age = now.saturating_duration_since(since);
                if age < self.probe_ttl {
                    return Err(Skip::CircuitOpen(self.probe_ttl - age));
                }
            }
        }
        if let Some(until) = s.cooling_until {
            if now < until {
                return Err(Skip::CoolingDown(until - now));
            }
            s.cooling_until = None;
        }
        let age = |t: Instant| now.saturating_duration_since(t);
        while s.requests.front().is_some_and(|t| age(*t) >= MINUTE) {
            s.requests.pop_front();
        }
        while s.tokens.front().is_some_and(|(t, _)| age(*t) >= MINUTE) {
            s.tokens.pop_front();
        }
        if self.rpm > 0 && s.requests.len() >= self.rpm as usize {
            let wait = s
                .requests
                .front()
                .map_or(MINUTE, |t| MINUTE.saturating_sub(age(*t)));
            return Err(Skip::LocalRateLimit(wait));
        }
        let spent = s.tokens.iter().fold(0u64, |a, (_, n)| a.saturating_add(*n));
        if self.tpm > 0 && spent >= self.tpm {
            let wait = s
                .tokens
                .front()
                .map_or(MINUTE, |(t, _)| MINUTE.saturating_sub(age(*t)));
            return Err(Skip::LocalRateLimit(wait));
        }
        if s.open_until.is_some() {
            s.probing = Some(now);
        }
        s.requests.push_back(now);
        Ok(())
    }

    /// A free slot for a call, if there is one.
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Waits for a slot.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Counts `tokens`, spent now, against the per-minute token limit.
    pub fn spent(&self, now: Instant, tokens: u64) {
        if tokens > 0 {
            let mut s = self.state.lock().expect("llm guard");
            s.tokens.push_back((now, tokens));
        }
    }

    /// The provider answered: the breaker closes.
    pub fn succeeded(&self) -> Breaker {
        let mut s = self.state.lock().expect("llm guard");
        s.failures = 0;
        s.open_until = None;
        s.probing = None;
        Breaker::Closed
    }

    /// The provider failed (429, 5xx, its own timeout, unreachable, auth or
    /// not-found errors); `retry_after` is what a 429 asked for. Returns the
    /// breaker's state after it.
    pub fn failed(&self, now: Instant, retry_after: Option<Duration>) -> Breaker {
        let mut s = self.state.lock().expect("llm guard");
        if let Some(d) = retry_after {
            // A provider asking for hours is skipped for ten minutes at a
            // time, then asked again.
            s.cooling_until = Some(now + d.min(MAX_COOLING));
        }
        s.failures = s.failures.saturating_add(1);
        if s.probing.is_some() || s.failures >= self.failures_to_open {
            s.open_until = Some(now + self.cooldown);
            s.probing = None;
        }
        state_of(&s)
    }

    /// The call ended without saying anything against the provider's
    /// health (a refusal, an unusable answer, a request it could not take,
    /// the caller's own deadline). A trial call counts as a good one: the
    /// provider answered.
    pub fn neutral(&self) -> Breaker {
        let mut s = self.state.lock().expect("llm guard");
        if s.probing.is_some() {
            s.probing = None;
            s.failures = 0;
            s.open_until = None;
        }
        state_of(&s)
    }

    pub fn breaker(&self) -> Breaker {
        state_of(&self.state.lock().expect("llm guard"))
    }
}

fn state_of(s: &State) -> Breaker {
    match s.open_until {
        None => Breaker::Closed,
        Some(_) if s.probing.is_some() => Breaker::HalfOpen,
        Some(_) => Breaker::Open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_consecutive_failures_and_closes_after_a_good_trial() {
        let g = Guard::new(4, 2, Duration::from_secs(10), Duration::from_secs(5), 0, 0);
        let t0 = Instant::now();
        assert!(g.admit(t0).is_ok());
        assert_eq!(g.failed(t0, None), Breaker::Closed);
        assert!(g.admit(t0).is_ok());
        assert_eq!(g.failed(t0, None), Breaker::Open);
        assert!(matches!(
            g.admit(t0 + Duration::from_secs(5)),
            Err(Skip::CircuitOpen(_))
        ));
        // After the cool-down: one trial call, and only one.
        let t1 = t0 + Duration::from_secs(11);
        assert!(g.admit(t1).is_ok());
        assert_eq!(g.breaker(), Breaker::HalfOpen);
        assert!(matches!(g.admit(t1), Err(Skip::CircuitOpen(_))));
        assert_eq!(g.succeeded(), Breaker::Closed);
        assert!(g.admit(t1).is_ok());
    }

    #[test]
    fn a_trial_whose_caller_went_away_does_not_hold_the_breaker_open() {
        let g = Guard::new(4, 1, Duration::from_secs(10), Duration::from_secs(5), 0, 0);
        let t0 = Instant::now();
        g.admit(t0).unwrap();
        g.failed(t0, None);
        let t1 = t0 + Duration::from_secs(10);
        g.admit(t1).unwrap();
        // The trial's future is dropped: nothing reports. Until it would
        // have timed out, no other trial; then another may try.
        assert!(g.admit(t1 + Duration::from_secs(4)).is_err());
        assert!(g.admit(t1 + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn a_failed_trial_reopens_at_once() {
        let g = Guard::new(4, 3, Duration::from_secs(10), Duration::from_secs(5), 0, 0);
        let t0 = Instant::now();
        for _ in 0..3 {
            g.admit(t0).unwrap();
            g.failed(t0, None);
        }
        let t1 = t0 + Duration::from_secs(10);
        g.admit(t1).unwrap();
        assert_eq!(g.failed(t1, None), Breaker::Open);
        assert!(matches!(
            g.admit(t1 + Duration::from_secs(9)),
            Err(Skip::CircuitOpen(_))
        ));
    }

    #[test]
    fn retry_after_cools_the_provider_down() {
        let g = Guard::new(4, 10, Duration::from_secs(10), Duration::from_secs(5), 0, 0);
        let t0 = Instant::now();
        g.admit(t0).unwrap();
        g.failed(t0, Some(Duration::from_secs(3)));
        assert_eq!(
            g.admit(t0 + Duration::from_secs(1)),
            Err(Skip::CoolingDown(Duration::from_secs(2)))
        );
        assert!(g.admit(t0 + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn requests_and_tokens_per_minute() {
        let g = Guard::new(4, 10, Duration::from_secs(10), Duration::from_secs(5), 2, 0);
        let t0 = Instant::now();
        g.admit(t0).unwrap();
        g.admit(t0).unwrap();
        assert!(matches!(g.admit(t0), Err(Skip::LocalRateLimit(_))));
        assert!(g.admit(t0 + MINUTE).is_ok());

        let g = Guard::new(
            4,
            10,
            Duration::from_secs(10),
            Duration::from_secs(5),
            0,
            100,
        );
        g.admit(t0).unwrap();
        // A slow call's tokens count from when they were spent.
        let done = t0 + Duration::from_secs(50);
        g.spent(done, 150);
        assert!(matches!(g.admit(done), Err(Skip::LocalRateLimit(_))));
        assert!(matches!(g.admit(t0 + MINUTE), Err(Skip::LocalRateLimit(_))));
        assert!(g.admit(done + MINUTE).is_ok());
    }
}
