//! `Backoff`: how long to wait before the next reconnect attempt.
//!
//! Owns the delay sequence only (capped exponential growth with random jitter); the
//! connection task does the sleeping and calls [`Backoff::reset`] after a successful login.

use std::time::Duration;

/// Capped exponential backoff with jitter: `min`, `2·min`, `4·min`, ... up to `max`, each
/// stretched by a random factor in `[1, 1 + jitter)` and never above `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: f64,
    /// Delays handed out since the last reset.
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// `jitter` is a fraction (0.2 = up to 20 % longer) and is clamped to `0.0..=1.0`;
    /// `max` below `min` is raised to `min`.
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Self {
        Self {
            min,
            max: max.max(min),
            jitter: if jitter.is_nan() {
                0.0
            } else {
                jitter.clamp(0.0, 1.0)
            },
            attempt: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// The same, with a seeded random source (for reproducible tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = fastrand::Rng::with_seed(seed);
        self
    }

    pub fn min(&self) -> Duration {
        self.min
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay before the next attempt; each call doubles the base up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .checked_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        if self.jitter == 0.0 {
            return base;
        }
        let factor = 1.0 + self.jitter * self.rng.f64();
        Duration::try_from_secs_f64(base.as_secs_f64() * factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Starts again from `min` (after a successful login).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    /// 1 s doubling up to 60 s, up to 20 % jitter.
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60), 0.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_jitter_doubles_up_to_the_cap_and_reset_starts_over() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS, 0.0);
        let delays: Vec<_> = (0..7).map(|_| backoff.next_delay()).collect();
        assert_eq!(
            delays,
            [
                100 * MS,
                200 * MS,
                400 * MS,
                800 * MS,
                1000 * MS,
                1000 * MS,
                1000 * MS
            ]
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), 100 * MS);
        assert_eq!(backoff.next_delay(), 200 * MS);
    }

    #[test]
    fn jitter_stretches_within_bounds_and_varies() {
        let mut backoff = Backoff::new(100 * MS, 10_000 * MS, 0.5).with_seed(7);
        let mut first = Vec::new();
        for round in 0..200 {
            backoff.reset();
            let delay = backoff.next_delay();
            assert!((100 * MS..150 * MS).contains(&delay), "{delay:?}");
            let second = backoff.next_delay();
            assert!((200 * MS..300 * MS).contains(&second), "{second:?}");
            if round < 10 {
                first.push(delay);
            }
        }
        first.sort();
        first.dedup();
        assert!(first.len() > 5, "jitter should vary: {first:?}");
    }

    #[test]
    fn never_exceeds_max_even_with_jitter_or_many_attempts() {
        let mut backoff = Backoff::new(300 * MS, 1000 * MS, 1.0).with_seed(1);
        for _ in 0..100 {
            let delay = backoff.next_delay();
            assert!((300 * MS..=1000 * MS).contains(&delay), "{delay:?}");
        }
        assert_eq!(backoff.next_delay(), 1000 * MS);
    }

    #[test]
    fn odd_settings_are_tamed() {
        let mut backoff = Backoff::new(500 * MS, 100 * MS, 7.0).with_seed(3);
        assert_eq!(backoff.max(), 500 * MS);
        assert_eq!(backoff.next_delay(), 500 * MS);
        let mut huge = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX, 0.0);
        let delays: Vec<_> = (0..70).map(|_| huge.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_secs(u64::MAX / 4));
        assert!(
            delays[3..].iter().all(|d| *d == Duration::MAX),
            "{delays:?}"
        );
    }
}
