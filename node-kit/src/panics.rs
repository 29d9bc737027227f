//! A panic hook for the node binaries: each panic is reported through `tracing` with its
//! location and an escaped, truncated message, at most once a second (the rest are
//! counted). The shells contain panics per datagram, message or handshake; this keeps
//! a burst of them from flooding the logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static LAST_REPORT_SECS: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);

/// Panics seen by the hook since start.
pub fn total() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}

pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        TOTAL.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if LAST_REPORT_SECS.swap(now, Ordering::Relaxed) == now {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("non-string payload");
        let message: String = payload.chars().take(200).collect();
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(%location, message = ?message, suppressed = SUPPRESSED.swap(0, Ordering::Relaxed), "panic");
    }));
}
