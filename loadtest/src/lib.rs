//! Local clusters (a core and edges on loopback) and, next, synthetic listeners and
//! speakers doing real ICE/DTLS/SRTP.

pub mod client;
pub mod cluster;
pub mod measure;
pub mod plot;
pub mod procs;
pub mod report;
pub mod scenario;
