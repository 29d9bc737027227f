//! This machine's raw ceiling, for the SFU's figures to be read against: UDP datagrams
//! (150 bytes) sent per CPU-second of the sending thread with `sendto` and `sendmmsg`, and
//! received per CPU-second of the receiving thread with `recvmmsg`, while that thread
//! keeps 25 sockets drained (without draining, the kernel drops early and sends look
//! cheaper than they are); over loopback, and with `--veth` over a veth pair into a
//! network namespace this creates (root and `ip` needed); and AES-128-GCM seals of such
//! a packet per CPU-second of one core.
//!
//! The receiving thread waits for readiness with `poll` before it reads, as an event loop
//! does, or with `--sweep` reads every socket every few milliseconds without asking, as
//! the load generator's receive threads do. On loopback the sender delivers each datagram
//! and pays for waking whoever waits on the socket, so sweeping gives the cheaper figure
//! for both sides. With `--connected` each receiving socket is connected to the sender,
//! as a WebRTC client's socket is to its server.
//!
//! `cargo run --release -p benches --bin ceiling -- [--veth] [--sweep] [--connected] [--json FILE]`

use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce};
use clap::Parser;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrIn};
use nix::time::{clock_gettime, ClockId};

#[derive(Parser)]
#[command(about = "UDP and AES-GCM ceilings of this machine, per CPU-second")]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Receiving sockets, drained by one thread.
    #[arg(long, default_value_t = 25)]
    sockets: usize,
    /// Datagram size in bytes.
    #[arg(long, default_value_t = 150)]
    size: usize,
    /// Also measure over a veth pair into a network namespace (needs root and `ip`).
    #[arg(long)]
    veth: bool,
    /// Receivers never read (the kernel drops once their buffers fill): for comparison only.
    #[arg(long, conflicts_with = "sweep")]
    no_drain: bool,
    /// Drain by reading every socket every `--sweep-ms` without waiting for readiness.
    #[arg(long)]
    sweep: bool,
    /// Receivers connected to the sender, as a WebRTC client's socket is to its server.
    #[arg(long)]
    connected: bool,
    /// Milliseconds between sweeps.
    #[arg(long, default_value_t = 5)]
    sweep_ms: u64,
    /// Also write the results here, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Datagrams per `sendmmsg` and `recvmmsg` call.
const BATCH: usize = 32;

#[derive(Clone, Copy, Debug)]
enum Send {
    SendTo,
    SendMmsg,
}

/// How the receiving thread keeps its sockets.
#[derive(Clone, Copy, Debug)]
enum Drain {
    /// Waits for readiness (`poll`), then reads the ready sockets.
    Poll,
    /// Reads every socket every so often, without readiness.
    Sweep(Duration),
    /// Never reads: the sockets stay bound (and full) until the sender is done.
    Never,
}

impl Drain {
    fn from_args(args: &Args) -> Drain {
        match (args.no_drain, args.sweep) {
            (true, _) => Drain::Never,
            (false, true) => Drain::Sweep(Duration::from_millis(args.sweep_ms.max(1))),
            (false, false) => Drain::Poll,
        }
    }

    /// The name the JSON report gives it.
    fn name(self) -> &'static str {
        match self {
            Drain::Poll => "poll",
            Drain::Sweep(_) => "sweep",
            Drain::Never => "never",
        }
    }

    fn describe(self) -> String {
        match self {
            Drain::Poll => "read when poll says ready".to_owned(),
            Drain::Sweep(every) => format!("swept every {} ms", every.as_millis()),
            Drain::Never => "never read".to_owned(),
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct UdpResult {
    path: &'static str,
    send: &'static str,
    sent: u64,
    received: u64,
    send_cpu_s: f64,
    receive_cpu_s: f64,
    /// Datagrams handed to the kernel per CPU-second of the sending thread.
    sends_per_cpu_s: f64,
    /// Datagrams drained per CPU-second of the receiving thread (`recvmmsg`).
    receives_per_cpu_s: f64,
}

fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).expect("thread CPU clock");
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Binds `n` receivers on `ip` (in the network namespace `netns`, if any) and drains them
/// with `recvmmsg` until `stop`; returns their addresses through `ready`, then what it
/// received and the CPU time it took.
fn receiver(
    ip: Ipv4Addr,
    n: usize,
    netns: Option<String>,
    drain: Drain,
    connect_to: Option<SocketAddr>,
    ready: std::sync::mpsc::Sender<Vec<SocketAddr>>,
    stop: Arc<AtomicBool>,
) -> (u64, Duration) {
    if let Some(ns) = netns {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace file");
        nix::sched::setns(file.as_raw_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| {
            let s = UdpSocket::bind((ip, 0)).expect("bind receiver");
            if let Some(peer) = connect_to {
                s.connect(peer).expect("connect receiver");
            }
            s
        })
        .collect();
    ready.send(sockets.iter().map(|s| s.local_addr().unwrap()).collect()).unwrap();
    let mut buffers = vec![[0u8; 2048]; BATCH];
    let slices: Vec<[std::io::IoSliceMut; 1]> =
        buffers.iter_mut().map(|b| [std::io::IoSliceMut::new(&mut b[..])]).collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
    let start = thread_cpu();
    let mut received = 0u64;
    let mut read_all = |s: &UdpSocket| {
        // A batch per call, until the socket is empty.
        while let Ok(r) =
            nix::sys::socket::recvmmsg(s.as_raw_fd(), &mut headers, slices.iter(), MsgFlags::MSG_DONTWAIT, None)
        {
            let n = r.count();
            received += n as u64;
            if n < BATCH {
                break;
            }
        }
    };
    match drain {
        Drain::Poll => {
            let mut fds: Vec<PollFd> = sockets.iter().map(|s| PollFd::new(s.as_raw_fd(), PollFlags::POLLIN)).collect();
            while !stop.load(Ordering::Relaxed) {
                if !matches!(poll(&mut fds, 1), Ok(n) if n > 0) {
                    continue;
                }
                for (s, fd) in sockets.iter().zip(&fds) {
                    if fd.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
                        read_all(s);
                    }
                }
            }
        }
        Drain::Sweep(every) => {
            while !stop.load(Ordering::Relaxed) {
                let next = Instant::now() + every;
                sockets.iter().for_each(&mut read_all);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }
        Drain::Never => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    (received, thread_cpu() - start)
}

/// Sends `size`-byte datagrams round-robin to `targets` for `seconds`, from `from`.
fn sender(socket: UdpSocket, targets: &[SocketAddr], size: usize, how: Send, seconds: f64) -> (u64, Duration) {
    let payload = vec![0x5au8; size];
    let addrs: Vec<SockaddrIn> = targets
        .iter()
        .map(|a| match a {
            SocketAddr::V4(v4) => SockaddrIn::from(*v4),
            SocketAddr::V6(_) => unreachable!("IPv4 receivers"),
        })
        .collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
    let slices: Vec<[IoSlice; 1]> = (0..BATCH).map(|_| [IoSlice::new(&payload)]).collect();
    let mut batch_addrs: Vec<Option<SockaddrIn>> = vec![None; BATCH];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = thread_cpu();
    let mut sent = 0u64;
    let mut next = 0usize;
    while Instant::now() < deadline {
        match how {
            Send::SendTo => {
                for _ in 0..BATCH {
                    if socket.send_to(&payload, targets[next]).is_ok() {
                        sent += 1;
                    }
                    next = (next + 1) % targets.len();
                }
            }
            Send::SendMmsg => {
                for (i, a) in batch_addrs.iter_mut().enumerate() {
                    *a = Some(addrs[(next + i) % addrs.len()]);
                }
                next = (next + BATCH) % addrs.len();
                if let Ok(r) = nix::sys::socket::sendmmsg(
                    socket.as_raw_fd(),
                    &mut headers,
                    slices.iter(),
                    &batch_addrs,
                    [],
                    MsgFlags::empty(),
                ) {
                    sent += r.count() as u64;
                }
            }
        }
    }
    (sent, thread_cpu() - start)
}

fn measure_udp(
    path: &'static str,
    send_from: Ipv4Addr,
    receive_on: Ipv4Addr,
    netns: Option<String>,
    how: Send,
    drain: Drain,
    args: &Args,
) -> UdpResult {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let sending = UdpSocket::bind((send_from, 0)).expect("bind sender");
    // Don't-fragment, as the edge's media sockets send.
    rustix::net::sockopt::set_ip_mtu_discover(&sending, rustix::net::sockopt::Ipv4PathMtuDiscovery::PROBE)
        .expect("don't-fragment on the sender");
    let receiving = {
        let (stop, n) = (stop.clone(), args.sockets);
        let connect_to = args.connected.then_some(sending.local_addr().expect("sender address"));
        std::thread::spawn(move || receiver(receive_on, n, netns, drain, connect_to, ready_tx, stop))
    };
    let targets = ready.recv().expect("receivers bound");
    let (sent, send_cpu) = sender(sending, &targets, args.size, how, args.seconds);
    // Let the receiver drain what is in flight.
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (received, receive_cpu) = receiving.join().expect("receiver thread");
    UdpResult {
        path,
        send: match how {
            Send::SendTo => "sendto",
            Send::SendMmsg => "sendmmsg",
        },
        sent,
        received,
        send_cpu_s: send_cpu.as_secs_f64(),
        receive_cpu_s: receive_cpu.as_secs_f64(),
        sends_per_cpu_s: sent as f64 / send_cpu.as_secs_f64().max(1e-9),
        receives_per_cpu_s: received as f64 / receive_cpu.as_secs_f64().max(1e-9),
    }
}

/// AES-128-GCM seals of a `size`-byte packet (12-byte header as associated data).
fn gcm_seals_per_cpu_s(size: usize, seconds: f64) -> f64 {
    let cipher = Aes128Gcm::new_from_slice(&[7u8; 16]).unwrap();
    let mut packet = vec![0x5au8; size];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = thread_cpu();
    let mut seals = 0u64;
    while Instant::now() < deadline {
        for i in 0..1000u32 {
            let mut nonce = [0u8; 12];
            nonce[8..].copy_from_slice(&i.to_be_bytes());
            let (header, body) = packet.split_at_mut(12);
            let tag = cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), header, body).unwrap();
            std::hint::black_box(tag);
        }
        seals += 1000;
    }
    seals as f64 / (thread_cpu() - start).as_secs_f64()
}

/// A veth pair from this namespace into a new one, removed on drop.
struct Veth {
    netns: String,
}

const VETH_HOST: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const VETH_PEER: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

impl Veth {
    fn create() -> Result<Veth, String> {
        let netns = format!("sfu-ceiling-{}", std::process::id());
        let veth = Veth { netns: netns.clone() };
        let host_if = format!("sfuc{}", std::process::id() % 100_000);
        let peer_if = format!("{host_if}p");
        let steps: [&[&str]; 7] = [
            &["netns", "add", &netns],
            &["link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &netns],
            &["addr", "add", "10.213.0.1/30", "dev", &host_if],
            &["link", "set", &host_if, "up"],
            &["-n", &netns, "addr", "add", "10.213.0.2/30", "dev", &peer_if],
            &["-n", &netns, "link", "set", &peer_if, "up"],
            &["-n", &netns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip").args(step).output().map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                return Err(format!("ip {}: {}", step.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Ok(veth)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

fn main() {
    let args = Args::parse();
    let drain = Drain::from_args(&args);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("ceiling: {cores} cores, {cpu}; {} s per measurement", args.seconds);
    let mut udp = Vec::new();
    for how in [Send::SendTo, Send::SendMmsg] {
        eprintln!("ceiling: loopback, {how:?}");
        udp.push(measure_udp("loopback", Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, None, how, drain, &args));
    }
    let veth = args.veth.then(Veth::create);
    match &veth {
        Some(Ok(v)) => {
            for how in [Send::SendTo, Send::SendMmsg] {
                eprintln!("ceiling: veth, {how:?}");
                udp.push(measure_udp("veth", VETH_HOST, VETH_PEER, Some(v.netns.clone()), how, drain, &args));
            }
        }
        Some(Err(e)) => eprintln!("ceiling: no veth pair ({e}); loopback only"),
        None => {}
    }
    drop(veth);
    eprintln!("ceiling: AES-128-GCM");
    let seals = gcm_seals_per_cpu_s(args.size, args.seconds);

    println!("| path | send | sent | received | sends per CPU-s (sender) | receives per CPU-s (recvmmsg) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in &udp {
        println!(
            "| {} | {} | {} | {} ({:.1} %) | {:.2} M | {:.2} M |",
            r.path,
            r.send,
            r.sent,
            r.received,
            100.0 * r.received as f64 / r.sent.max(1) as f64,
            r.sends_per_cpu_s / 1e6,
            r.receives_per_cpu_s / 1e6
        );
    }
    println!("\nAES-128-GCM seals of a {}-byte packet: {:.2} M per CPU-second", args.size, seals / 1e6);
    println!("({cores} cores, {cpu}; {} receiving sockets, {})", args.sockets, drain.describe());
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "cores": cores,
            "cpu": cpu,
            "size": args.size,
            "sockets": args.sockets,
            "receive": drain.name(),
            "sweep_ms": args.sweep_ms,
            "udp": udp,
            "gcm_seals_per_cpu_s": seals,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).expect("write JSON");
    }
}
