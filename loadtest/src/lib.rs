//! Local clusters (a core and edges on loopback), synthetic listeners and speakers doing
//! real ICE/DTLS/SRTP, load scenarios and their reports, and attacks run beside them.

pub mod attack;
pub mod client;
pub mod cluster;
pub mod forwarding;
pub mod janus;
pub mod link;
pub mod measure;
pub mod plot;
pub mod pool;
pub mod procs;
pub mod report;
pub mod scenario;
