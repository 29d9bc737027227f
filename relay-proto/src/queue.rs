//! Media queues bounded by age: audio that waited longer than its budget is worth less
//! than nothing (it delays everything behind it), so it is dropped, oldest first, and
//! counted. Sans-IO: the caller passes the time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long a media datagram may wait in a queue of ours before it is dropped.
pub const MEDIA_AGE_BUDGET: Duration = Duration::from_millis(60);

/// A FIFO of datagrams that drops what is older than `budget` when it is taken, and the
/// oldest when it holds more than `max_bytes`.
#[derive(Debug)]
pub struct AgedQueue {
    items: VecDeque<(Instant, Bytes)>,
    bytes: usize,
    budget: Duration,
    max_bytes: usize,
    /// Dropped for waiting longer than the budget.
    pub dropped_stale: u64,
    /// Dropped (oldest) to stay within `max_bytes`.
    pub dropped_full: u64,
}

impl AgedQueue {
    pub fn new(budget: Duration, max_bytes: usize) -> Self {
        AgedQueue { items: VecDeque::new(), bytes: 0, budget, max_bytes, dropped_stale: 0, dropped_full: 0 }
    }

    pub fn push(&mut self, now: Instant, data: Bytes) {
        self.bytes += data.len();
        self.items.push_back((now, data));
        while self.bytes > self.max_bytes {
            let Some((_, old)) = self.items.pop_front() else { break };
            self.bytes -= old.len();
            self.dropped_full += 1;
        }
    }

    /// The oldest datagram still within its budget, with how long it waited; older ones
    /// in front of it are dropped.
    pub fn pop(&mut self, now: Instant) -> Option<(Bytes, Duration)> {
        while let Some((at, data)) = self.items.pop_front() {
            self.bytes -= data.len();
            let age = now.saturating_duration_since(at);
            if age <= self.budget {
                return Some((data, age));
            }
            self.dropped_stale += 1;
        }
        None
    }

    /// Drops everything over budget now (what a reader would drop anyway).
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.items.front() {
            if now.saturating_duration_since(*at) <= self.budget {
                break;
            }
            let (_, data) = self.items.pop_front().expect("front exists");
            self.bytes -= data.len();
            self.dropped_stale += 1;
        }
    }

    /// How long the oldest waiting datagram has waited.
    pub fn oldest_age(&self, now: Instant) -> Duration {
        self.items.front().map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at))
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Bytes {
        Bytes::from(vec![n; 100])
    }

    #[test]
    fn what_waited_past_the_budget_is_dropped_oldest_first_and_counted() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = AgedQueue::new(ms(60), 1 << 20);
        q.push(t0, d(1));
        q.push(t0 + ms(30), d(2));
        q.push(t0 + ms(50), d(3));
        // At 85 ms the first has waited 85 ms, the second 55 ms.
        let (first, age) = q.pop(t0 + ms(85)).unwrap();
        assert_eq!((first[0], age), (2, ms(55)));
        assert_eq!(q.dropped_stale, 1);
        assert_eq!(q.oldest_age(t0 + ms(85)), ms(35));
        q.expire(t0 + ms(200));
        assert!(q.is_empty());
        assert_eq!(q.dropped_stale, 2);
        assert_eq!(q.pop(t0 + ms(200)), None);
    }

    #[test]
    fn a_byte_cap_drops_the_oldest() {
        let t0 = Instant::now();
        let mut q = AgedQueue::new(Duration::from_millis(60), 250);
        for n in 0..5 {
            q.push(t0, d(n));
        }
        assert_eq!((q.len(), q.dropped_full), (2, 3));
        assert_eq!(q.pop(t0).unwrap().0[0], 3);
    }
}
