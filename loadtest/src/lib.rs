//! Load tester: synthetic speakers and listeners doing real ICE, DTLS and SRTP with the
//! `media` crate's client side, reporting join time, loss, jitter and latency.
//! Built in the load-test issue; see DESIGN.md.
