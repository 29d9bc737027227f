//! The DTLS record filter that stands before the DTLS library, and the ClientHello
//! assembly behind it (several datagrams in sequence: see `dtls_handshake`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use media::dtls_filter::{hello_fragments, inspect, HelloAssembly};

fuzz_target!(|data: &[u8]| {
    if let Ok(shape) = inspect(data) {
        // Every record is at least a 13-byte header.
        assert!(shape.records >= 1 && shape.records * 13 <= data.len());
        let mut assembly = HelloAssembly::default();
        for f in hello_fragments(data) {
            let _ = assembly.add(&f);
        }
    }
});
