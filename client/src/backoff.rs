//! Exponential backoff with jitter for reconnects and retries (pure: the caller sleeps).

use rand::Rng;
use std::time::Duration;

/// Delays that double from `initial` up to `max`, each drawn uniformly from the upper half
/// of the current step ("equal jitter"), so that many clients that lost the same node do
/// not come back in lockstep, while a delay never collapses to zero.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn current_step(&self) -> Duration {
        // 2^20 × 1 ms already exceeds any sensible max; the shift cannot overflow.
        let factor = 1u32 << self.attempt.min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay to wait, with jitter drawn from `rng`.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let step = self.current_step();
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let spread = (step - half).as_micros() as u64;
        half + Duration::from_micros(rng.random_range(0..=spread))
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn delays_double_then_stay_at_max() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let steps: Vec<_> = (0..7)
            .map(|_| {
                let step = backoff.current_step();
                backoff.attempt += 1;
                step.as_millis()
            })
            .collect();
        assert_eq!(steps, vec![100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_the_upper_half_of_the_step() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..200 {
            let step = backoff.current_step();
            let delay = backoff.next_delay(&mut rng);
            assert!(delay >= step / 2, "{delay:?} below half of {step:?}");
            assert!(delay <= step, "{delay:?} above {step:?}");
        }
        assert_eq!(backoff.current_step(), Duration::from_secs(2));
    }

    #[test]
    fn jitter_spreads_clients_apart() {
        let mut rng = StdRng::seed_from_u64(42);
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|_| {
                let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
                backoff.next_delay(&mut rng)
            })
            .collect();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
    }

    #[test]
    fn reset_starts_over_and_many_attempts_do_not_overflow() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(30));
        for _ in 0..1000 {
            backoff.next_delay(&mut rng);
        }
        assert_eq!(backoff.current_step(), Duration::from_secs(30));
        assert_eq!(backoff.attempts(), 1000);
        backoff.reset();
        assert_eq!(backoff.current_step(), Duration::from_millis(10));
    }

    #[test]
    fn degenerate_settings_are_clamped() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        let delay = backoff.next_delay(&mut rng);
        assert!(delay <= Duration::from_millis(1));
        assert!(delay >= Duration::from_micros(500));
    }
}
