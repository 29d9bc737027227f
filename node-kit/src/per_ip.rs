//! A rate limit per client address (IPv6 by /64, as one host usually holds a whole
//! prefix), with the time until the next request would pass, for `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub struct PerIpLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

/// The key for an address: IPv4 as is (also when mapped into IPv6), IPv6 by its /64.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

impl PerIpLimiter {
    /// `per_sec` requests a second per address, `burst` at once.
    pub fn new(per_sec: u32, burst: u32) -> Arc<Self> {
        let quota = Quota::per_second(NonZeroU32::new(per_sec.max(1)).expect("at least 1"))
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"));
        Arc::new(PerIpLimiter { limiter: RateLimiter::keyed(quota), clock: DefaultClock::default() })
    }

    /// `Ok` if a request from `ip` may pass now, else how long until one would.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.limiter.check_key(&key(ip)).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets addresses that are back to a full burst; run periodically so the table
    /// holds only recently active addresses.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }

    /// Runs [`forget_idle`](Self::forget_idle) every `every` for as long as the limiter lives.
    pub fn spawn_housekeeping(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(l) => l.forget_idle(),
                    None => break,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_burst_and_v6_counts_by_prefix() {
        let l = PerIpLimiter::new(1, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!((0..10).filter(|_| l.check(a).is_ok()).count(), 3);
        let wait = l.check(a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(l.check(b).is_ok());
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!((0..10).filter(|_| l.check(v6a).is_ok()).count(), 3);
        assert!(l.check(v6b).is_err(), "same /64");
        assert_eq!(key("::ffff:192.0.2.1".parse().unwrap()), a);
    }
}
