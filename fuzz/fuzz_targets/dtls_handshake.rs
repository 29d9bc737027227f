//! The DTLS library behind our record filter: a server handshake (as the edge runs it)
//! fed the datagrams an attacker sends, after the same filter and allowance the edge
//! applies. A panic anywhere, in the handshake or in the library's own tasks, is a crash.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media::dtls::{self, DatagramSink, DtlsIdentity};
use media::dtls_filter::{HelloAssembly, HelloStep};

fn identity() -> &'static DtlsIdentity {
    static ID: OnceLock<DtlsIdentity> = OnceLock::new();
    ID.get_or_init(|| DtlsIdentity::generate().expect("certificate"))
}

// The input is datagrams, each prefixed by a 2-byte length (seeds: real client flights).
fuzz_target!(|data: &[u8]| {
    let mut datagrams = Vec::new();
    let mut rest = data;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let n = usize::from(u16::from_be_bytes(*len)).min(tail.len()).min(1500);
        datagrams.push(Bytes::copy_from_slice(&tail[..n]));
        rest = &tail[n..];
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(dtls::DTLS_QUEUE);
        let sink: DatagramSink = Arc::new(|_| {});
        let remote = SocketAddr::from(([127, 0, 0, 1], 5000));
        let handshake = tokio::spawn(dtls::handshake(identity(), false, rx, sink, remote, [0; 32], Duration::from_secs(2)));
        let limits = edge_sfu::budget::SessionLimits::default();
        let mut budget = edge_sfu::budget::SessionBudget::new(&limits, std::time::Instant::now());
        let mut hello = HelloAssembly::default();
        let mut held = Vec::new();
        for d in datagrams {
            let Ok(shape) = media::dtls_filter::inspect(&d) else { continue };
            if !budget.admit_dtls(d.len(), shape, false, std::time::Instant::now()) {
                continue;
            }
            // As the edge does: parts of a ClientHello wait until it is whole and checked.
            if shape.partial_hello {
                let mut step = HelloStep::Pass;
                for f in media::dtls_filter::hello_fragments(&d) {
                    step = hello.add(&f);
                    if step == HelloStep::Reject {
                        break;
                    }
                }
                match step {
                    HelloStep::Hold => {
                        held.push(d);
                        continue;
                    }
                    HelloStep::Reject => {
                        held.clear();
                        continue;
                    }
                    HelloStep::Release => {
                        for h in held.drain(..) {
                            let _ = tx.try_send(h);
                        }
                    }
                    HelloStep::Pass => {}
                }
            }
            let _ = tx.try_send(d);
            tokio::task::yield_now().await;
        }
        // Time is paused: the timeout fires as soon as the handshake has nothing to do.
        let _ = handshake.await;
    });
});
