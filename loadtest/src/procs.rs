//! SFU nodes as child processes of the load tester (`loadtest node ...`), so their CPU
//! and memory can be read from /proc apart from the load generator's own.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A node started with `loadtest node ...`; killed when dropped.
pub struct NodeProcess {
    pub name: String,
    pub child: Child,
    /// Addresses the node printed when ready: `http`, and `quic` or `udp`.
    pub http: SocketAddr,
    pub other: SocketAddr,
}

impl NodeProcess {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Starts `loadtest node <args>` and waits for its `READY http=... <kind>=...` line.
pub async fn spawn(name: &str, args: &[String]) -> anyhow::Result<NodeProcess> {
    let exe = std::env::current_exe().context("finding the loadtest binary")?;
    spawn_exe(&exe, name, args).await
}

/// [`spawn`] with the loadtest binary at `exe` (tests name it by `CARGO_BIN_EXE_loadtest`).
pub async fn spawn_exe(exe: &std::path::Path, name: &str, args: &[String]) -> anyhow::Result<NodeProcess> {
    let mut child = Command::new(exe)
        .arg("node")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .with_context(|| format!("{name} did not get ready"))??
        .with_context(|| format!("{name} exited before it was ready"))?;
    let mut addrs = line.strip_prefix("READY ").with_context(|| format!("{name} said {line:?}"))?.split(' ');
    let mut next = || -> anyhow::Result<SocketAddr> {
        let field = addrs.next().context("short READY line")?;
        Ok(field.split_once('=').context("bad READY field")?.1.parse()?)
    };
    let (http, other) = (next()?, next()?);
    Ok(NodeProcess { name: name.to_owned(), child, http, other })
}

/// Prints the READY line a parent waits for.
pub fn announce_ready(http: SocketAddr, kind: &str, other: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "READY http={http} {kind}={other}");
    let _ = out.flush();
}

/// The name the load generator's own process is sampled under.
pub const LOAD_GENERATOR: &str = "loadtest";

/// CPU and resident memory of processes, from /proc.
pub struct ProcSampler {
    procs: Vec<(String, u32)>,
    last: Vec<Option<(u64, Instant)>>,
    rss_now: Vec<Option<f64>>,
    pub samples: Vec<Vec<(f64, f64)>>,
}

/// Linux reports times in /proc in USER_HZ, 100 on every architecture it supports.
const TICKS_PER_SECOND: f64 = 100.0;

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

impl ProcSampler {
    pub fn new(procs: Vec<(String, u32)>) -> Self {
        let n = procs.len();
        ProcSampler { procs, last: vec![None; n], rss_now: vec![None; n], samples: vec![Vec::new(); n] }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.procs.iter().map(|(n, _)| n.as_str())
    }

    /// Takes one (CPU %, RSS MB) sample per process; CPU is since the previous sample.
    pub fn sample(&mut self) {
        let now = Instant::now();
        for (i, (_, pid)) in self.procs.iter().enumerate() {
            let (Some(ticks), Some(rss)) = (cpu_ticks(*pid), rss_mb(*pid)) else { continue };
            self.rss_now[i] = Some(rss);
            if let Some((t0, at)) = self.last[i] {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                let cpu = (ticks.saturating_sub(t0)) as f64 / TICKS_PER_SECOND / secs * 100.0;
                self.samples[i].push((cpu, rss));
            }
            self.last[i] = Some((ticks, now));
        }
    }

    /// CPU-seconds each process has used so far (`None` for one that is gone).
    pub fn cpu_seconds(&self) -> Vec<Option<f64>> {
        self.procs.iter().map(|(_, pid)| cpu_ticks(*pid).map(|t| t as f64 / TICKS_PER_SECOND)).collect()
    }

    /// Total RSS at the last sample of the processes named other than `except`, MB.
    pub fn total_rss_except(&self, except: &str) -> Option<f64> {
        let rss: Vec<f64> =
            self.procs.iter().zip(&self.rss_now).filter(|((n, _), _)| n != except).filter_map(|(_, r)| *r).collect();
        (!rss.is_empty()).then(|| rss.iter().sum())
    }
}

/// Pins every thread of a process to `cpus` (a `taskset` list).
pub fn pin(pid: Option<u32>, cpus: &str) -> anyhow::Result<()> {
    pin_threads(pid, cpus, |_| true)
}

/// Pins the threads of a process whose name `pick` accepts to `cpus` (a `taskset` list).
pub fn pin_threads(pid: Option<u32>, cpus: &str, pick: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let pid = pid.context("the process has exited")?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).context("listing the process's threads")?;
    for task in tasks {
        let task = task?.path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let Some(tid) = task.file_name().and_then(|t| t.to_str()) else { continue };
        if !pick(name.trim()) {
            continue;
        }
        let out = std::process::Command::new("taskset")
            .args(["-cp", cpus, tid])
            .output()
            .context("running taskset (util-linux)")?;
        // A thread that has ended since the listing needs no pinning.
        anyhow::ensure!(
            out.status.success() || !task.exists(),
            "taskset -cp {cpus} {tid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_from_proc() {
        let pid = std::process::id();
        assert!(rss_mb(pid).unwrap() > 1.0);
        assert!(cpu_ticks(pid).is_some());
        let mut sampler = ProcSampler::new(vec![("self".into(), pid), ("gone".into(), u32::MAX)]);
        sampler.sample();
        sampler.sample();
        assert_eq!(sampler.samples[0].len(), 1, "one interval from two samples");
        assert!(sampler.samples[0][0].1 > 1.0);
        assert!(sampler.samples[1].is_empty(), "a missing process is skipped");
        assert!(sampler.total_rss_except("gone").unwrap() > 1.0);
        let cpu = sampler.cpu_seconds();
        assert!(cpu[0].is_some() && cpu[1].is_none());
        assert_eq!(sampler.total_rss_except("self"), None);
    }

    /// The CPUs `Cpus_allowed_list` names for thread `tid` of this process.
    fn allowed(tid: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_owned()
    }

    #[test]
    fn pins_only_the_threads_picked_by_name() {
        let all = allowed(&std::process::id().to_string());
        let cpu = all.split([',', '-']).next().unwrap().to_owned();
        let mut running = Vec::new();
        for name in ["pin-me", "leave-me"] {
            let (tid_tx, tid_rx) = std::sync::mpsc::channel();
            let (stop, stopped) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let link = std::fs::read_link("/proc/thread-self").unwrap();
                    tid_tx.send(link.file_name().unwrap().to_string_lossy().into_owned()).unwrap();
                    let _ = stopped.recv();
                })
                .unwrap();
            running.push((tid_rx.recv().unwrap(), stop, thread));
        }
        pin_threads(Some(std::process::id()), &cpu, |name| name == "pin-me").unwrap();
        assert_eq!(allowed(&running[0].0), cpu, "the picked thread is pinned");
        assert_eq!(allowed(&running[1].0), all, "the other thread is left as it was");
        for (_, stop, thread) in running {
            drop(stop);
            thread.join().unwrap();
        }
    }
}
