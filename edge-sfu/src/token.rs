//! Join tokens (shared with the core, which mints them for operators).

pub use node_kit::token::*;
