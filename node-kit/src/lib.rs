//! What every node's process shell shares: a token bucket over explicit `Instant`s
//! ([`bucket`]); an HTTP server with a connection cap and header, body and request
//! timeouts ([`http`]); per-IP rate limits ([`per_ip`]); secrets that are long enough
//! and never print ([`secret`]); a panic hook that reports contained panics
//! through `tracing`, rate-limited ([`panics`], [`throttle`]); and logging set-up
//! ([`logging`]).

pub mod bucket;
pub mod histogram;
pub mod http;
pub mod logging;
pub mod metrics_catalogue;
pub mod panics;
pub mod per_ip;
pub mod process_stats;
pub mod reasons;
pub mod secret;
pub mod throttle;
pub mod token;

pub use secret::{Secret, SecretError, SecretText, MIN_SECRET_LEN};
