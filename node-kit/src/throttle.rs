//! Log throttling for events an attacker can repeat: at most one line per period, and
//! the next line says how many were suppressed meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Throttle {
    last_secs: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

impl Throttle {
    pub const fn new() -> Self {
        Throttle { last_secs: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(suppressed since the last line)` if a line may be logged now (at most one per
    /// `period_secs`), `None` if this one is suppressed.
    pub fn allow(&self, period_secs: u64) -> Option<u64> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.last_secs.load(Ordering::Relaxed);
        if now < last + period_secs.max(1)
            || self.last_secs.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_count_of_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.allow(3600), Some(0));
        for _ in 0..5 {
            assert_eq!(t.allow(3600), None);
        }
        // A new period (simulated by rewinding the last line's time) reports the five.
        t.last_secs.store(0, Ordering::Relaxed);
        assert_eq!(t.allow(3600), Some(5));
    }
}
