//! What a session may cost the edge: a token bucket for its packets and bytes once it
//! is connected, and a fixed allowance for its DTLS handshake before it is trusted.
//! Sans-IO: every call takes the current `Instant`.

use std::time::Instant;

use media::dtls_filter::DtlsShape;
use node_kit::bucket::TokenBucket;

/// Per-session limits, in packets and bytes per second.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Datagrams a second of every kind (an Opus speaker that also listens sends ~55).
    pub packets_per_sec: u32,
    /// Bytes a second (Opus at its 510 kbit/s maximum is ~64 KB/s).
    pub bytes_per_sec: u32,
    /// DTLS before the handshake completes: bytes, records, and handshake fragments.
    pub handshake_bytes: usize,
    pub handshake_records: usize,
    pub handshake_fragments: usize,
    /// DTLS datagrams a second after the handshake (retransmitted flights, alerts).
    pub dtls_after_handshake_per_sec: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            packets_per_sec: 200,
            bytes_per_sec: 128 * 1024,
            handshake_bytes: 32 * 1024,
            handshake_records: 48,
            handshake_fragments: 64,
            dtls_after_handshake_per_sec: 10,
        }
    }
}

/// A session's running budget.
#[derive(Clone, Debug)]
pub struct SessionBudget {
    packets: TokenBucket,
    bytes: TokenBucket,
    dtls_after: TokenBucket,
    handshake_bytes: usize,
    handshake_records: usize,
    handshake_fragments: usize,
}

impl SessionBudget {
    pub fn new(limits: &SessionLimits, now: Instant) -> Self {
        SessionBudget {
            packets: TokenBucket::new(limits.packets_per_sec, limits.packets_per_sec, now),
            bytes: TokenBucket::new(limits.bytes_per_sec, limits.bytes_per_sec, now),
            dtls_after: TokenBucket::new(
                limits.dtls_after_handshake_per_sec,
                2 * limits.dtls_after_handshake_per_sec,
                now,
            ),
            handshake_bytes: limits.handshake_bytes,
            handshake_records: limits.handshake_records,
            handshake_fragments: limits.handshake_fragments,
        }
    }

    /// Charges one datagram of `len` bytes; false if it is over the session's rate.
    pub fn admit(&mut self, len: usize, now: Instant) -> bool {
        self.packets.take(1, now) && self.bytes.take(len.min(u32::MAX as usize) as u32, now)
    }

    /// Charges a DTLS datagram; before the handshake from the fixed allowance, after it
    /// from a slow bucket. False if it does not fit.
    pub fn admit_dtls(&mut self, len: usize, shape: DtlsShape, connected: bool, now: Instant) -> bool {
        if connected {
            return self.dtls_after.take(1, now);
        }
        if len > self.handshake_bytes
            || shape.records > self.handshake_records
            || shape.fragments > self.handshake_fragments
        {
            return false;
        }
        self.handshake_bytes -= len;
        self.handshake_records -= shape.records;
        self.handshake_fragments -= shape.fragments;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_ten_times_opus_sender_is_held_to_the_session_rate() {
        let t0 = Instant::now();
        let mut budget = SessionBudget::new(&SessionLimits::default(), t0);
        // 500 packets a second for 10 s.
        let passed = (0..5000).filter(|i| budget.admit(150, t0 + Duration::from_millis(2 * i))).count();
        assert!((2000..=2200).contains(&passed), "{passed}");
    }

    #[test]
    fn the_handshake_allowance_is_fixed() {
        let t0 = Instant::now();
        let limits = SessionLimits::default();
        let mut budget = SessionBudget::new(&limits, t0);
        let one = DtlsShape { records: 1, fragments: 1, partial_hello: false };
        let passed = (0..1000).filter(|_| budget.admit_dtls(200, one, false, t0 + Duration::from_secs(60))).count();
        assert_eq!(passed, limits.handshake_records);
        let tiny = DtlsShape { records: 1, fragments: 100, partial_hello: false };
        assert!(!SessionBudget::new(&limits, t0).admit_dtls(1300, tiny, false, t0));
    }
}
