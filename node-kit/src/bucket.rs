//! A token bucket over explicit `Instant`s, for sans-IO rate limits.

use std::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket { tokens: f64::from(burst), rate: f64::from(rate), burst: f64::from(burst), last: now }
    }

    /// Takes `cost` tokens if there are enough.
    pub fn take(&mut self, cost: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let cost = f64::from(cost);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_its_rate_and_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, 10, t0);
        assert_eq!((0..20).filter(|_| b.take(1, t0)).count(), 10, "burst");
        // One second later: 50 more, capped at the burst of 10.
        assert_eq!((0..20).filter(|_| b.take(1, t0 + Duration::from_secs(1))).count(), 10);
        // Paced at the rate, everything passes.
        let mut b = TokenBucket::new(50, 10, t0);
        let paced = (0..500).filter(|i| b.take(1, t0 + Duration::from_millis(20 * i))).count();
        assert_eq!(paced, 500);
    }
}
