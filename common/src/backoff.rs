//! The one retry back-off of both binaries: exponential, capped, jittered, with a floor.
//! The agent's report loop uses full jitter above its report interval; the coordinator's store
//! buffer uses equal jitter so that many replicas' retries spread out but never fire at once.

use rand::Rng;
use std::time::Duration;

/// How a delay is drawn below the current ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, ceiling]`.
    Full,
    /// Uniform in `[ceiling / 2, ceiling]`.
    Equal,
}

/// Exponential back-off: after the n-th consecutive failure the ceiling is
/// `min(cap, base * 2^(n-1))`; the delay is drawn below it by the [`Jitter`] and is never below
/// `floor`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    floor: Duration,
    jitter: Jitter,
    failures: u32,
}

impl Backoff {
    /// A back-off from `base` doubling up to `cap`, with full jitter and no floor.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            floor: Duration::ZERO,
            jitter: Jitter::Full,
            failures: 0,
        }
    }

    /// Never waits less than `floor`.
    pub fn with_floor(mut self, floor: Duration) -> Self {
        self.floor = floor;
        self
    }

    /// Draws delays by `jitter`.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Records a failure and returns the delay before the next attempt.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.ceiling();
        let delay = match self.jitter {
            Jitter::Full => ceiling.mul_f64(rng.random_range(0.0..=1.0)),
            Jitter::Equal => {
                let half = ceiling / 2;
                half + half.mul_f64(rng.random_range(0.0..=1.0))
            }
        };
        delay.max(self.floor)
    }

    /// Upper bound of the current delay.
    pub fn ceiling(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << exp).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn equal_jitter_stays_in_the_upper_half_of_the_ceiling() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
            .with_jitter(Jitter::Equal);
        for _ in 0..10 {
            let d = b.next_delay(&mut rng);
            let c = b.ceiling();
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
        }
    }
}
