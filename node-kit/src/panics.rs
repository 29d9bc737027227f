//! A panic hook for the node binaries: each panic is reported through `tracing` with its
//! location and an escaped, truncated message, at most once a second (the rest are
//! counted). The shells contain panics per datagram, message or handshake; this keeps
//! a burst of them from flooding the logs.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::throttle::Throttle;

static THROTTLE: Throttle = Throttle::new();
static TOTAL: AtomicU64 = AtomicU64::new(0);

/// Panics seen by the hook since start.
pub fn total() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}

pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        TOTAL.fetch_add(1, Ordering::Relaxed);
        let Some(suppressed) = THROTTLE.allow(1) else { return };
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("non-string payload");
        let message: String = payload.chars().take(200).collect();
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(%location, message = ?message, suppressed, "panic");
    }));
}
