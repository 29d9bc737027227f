//! The DTLS record filter that stands before the DTLS library.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(shape) = media::dtls_filter::inspect(data) {
        // Every record is at least a 13-byte header.
        assert!(shape.records >= 1 && shape.records * 13 <= data.len());
    }
});
