//! When a failed delivery is tried again: exponential backoff with jitter, for about
//! a day, then never.
//!
//! The n-th retry waits `first × 2^(n-1)`, capped at `cap`, each wait scaled by a
//! random factor in `[1 - jitter, 1 + jitter]` so that many deliveries failing together
//! (a receiver down) do not all come back together. With the defaults (5 s, doubling,
//! capped at 4 h, ±20 %) the tries come about 5 s, 10 s, 20 s … 85 min, 2.8 h, then
//! every 4 h, and the delivery is given up once its next try would fall more than
//! `give_up_after` (24 h) after it was created: 17 tries in all.

use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait before the first retry.
    pub first: std::time::Duration,
    /// The longest wait between two tries.
    pub cap: std::time::Duration,
    /// A delivery is given up when its next try would come later than this after it
    /// was created.
    pub give_up_after: std::time::Duration,
    /// Each wait is scaled by a factor in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: std::time::Duration::from_secs(5),
            cap: std::time::Duration::from_secs(4 * 3600),
            give_up_after: std::time::Duration::from_secs(24 * 3600),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The wait after `attempts` failed tries (1 after the first), before jitter.
    pub fn base_delay(&self, attempts: u32) -> std::time::Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        self.first
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// When to try next after `attempts` failures of a delivery created at `created_at`,
    /// failing now; `None`: give up. `unit` is a uniform draw in `[0, 1)`.
    pub fn next_attempt(
        &self,
        created_at: DateTime<Utc>,
        attempts: u32,
        now: DateTime<Utc>,
        unit: f64,
    ) -> Option<DateTime<Utc>> {
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        let wait = self.base_delay(attempts).mul_f64(factor.max(0.0));
        let next = now + Duration::from_std(wait).ok()?;
        let deadline = created_at + Duration::from_std(self.give_up_after).ok()?;
        (next <= deadline).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_for_about_a_day_then_gives_up() {
        let backoff = Backoff::default();
        let created = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        let mut now = created;
        let mut attempts = 0;
        // Always the middle of the jitter range.
        while let Some(next) = backoff.next_attempt(created, attempts + 1, now, 0.5) {
            attempts += 1;
            assert!(next > now);
            now = next;
        }
        attempts += 1; // the last, failed try
        assert_eq!(attempts, 17, "tries in a day");
        assert!(now - created > Duration::hours(20) && now - created <= Duration::hours(24));
    }

    #[test]
    fn waits_double_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.base_delay(1).as_secs(), 5);
        assert_eq!(b.base_delay(2).as_secs(), 10);
        assert_eq!(b.base_delay(5).as_secs(), 80);
        assert_eq!(b.base_delay(14).as_secs(), 4 * 3600);
        assert_eq!(b.base_delay(u32::MAX).as_secs(), 4 * 3600);
    }

    #[test]
    fn jitter_spreads_waits_within_its_range() {
        let b = Backoff::default();
        let t = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        let low = b.next_attempt(t, 3, t, 0.0).unwrap() - t;
        let high = b.next_attempt(t, 3, t, 0.999_999).unwrap() - t;
        assert_eq!(low.num_milliseconds(), 16_000);
        assert!(high.num_milliseconds() > 23_900 && high.num_milliseconds() <= 24_000);
    }
}
