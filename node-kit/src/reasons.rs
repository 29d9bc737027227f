//! Counts by reason for a fixed set of reasons (an enum's discriminants), shared by HTTP
//! handlers and read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct ReasonCounts<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for ReasonCounts<N> {
    fn default() -> Self {
        ReasonCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl<const N: usize> ReasonCounts<N> {
    /// Counts one for reason `i` (out of range: ignored).
    pub fn count(&self, i: usize) {
        if let Some(c) = self.0.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, i: usize) -> u64 {
        self.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}
