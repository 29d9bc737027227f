//! Criterion benchmarks of the hot paths (slot rewriting, SRTP, relay codecs, fan-out)
//! and side-by-side comparisons with another SFU. See DESIGN.md.
