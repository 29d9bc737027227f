//! The result of a run: percentiles, loss, per-edge rows and SFU resource use, as a
//! table for people and JSON for machines, with the thresholds CI and ops gate on.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{latency_histogram, ClientReport};
use crate::procs::ProcSampler;
use crate::scenario::Scenario;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p99_9_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }

    fn of_durations(d: impl Iterator<Item = Duration>) -> Self {
        let mut h = latency_histogram();
        for x in d {
            let _ = h.record((x.as_micros() as u64).max(1));
        }
        Self::of(&h)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct EdgeRow {
    pub edge: usize,
    pub listeners: usize,
    pub loss_percent: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessRow {
    pub name: String,
    pub cpu_mean_percent: f64,
    pub cpu_max_percent: f64,
    pub rss_max_mb: f64,
}

/// The steady phase alone (every client joined, before the stop): what forwarding
/// costs, without the handshakes of the ramp.
#[derive(Clone, Debug, Serialize)]
pub struct SteadyPhase {
    pub seconds: f64,
    /// Audio packets listeners received per second.
    pub packets_per_s: f64,
    /// Cores each sampled process used.
    pub processes: Vec<SteadyCpu>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SteadyCpu {
    pub name: String,
    pub cpu_cores: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Tick {
    pub t_s: f64,
    pub joined: u64,
    pub packets_per_s: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub sfu_rss_mb: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub edges: usize,
    pub speakers: usize,
    pub target_listeners: usize,
    pub listeners_joined: usize,
    pub failed: usize,
    pub errors: Vec<String>,
    pub churned: u64,
    pub run_s: f64,
    pub join_time: Percentiles,
    pub latency: Percentiles,
    pub speaker_switch: Percentiles,
    /// Packets the speakers sent (each reaches every listener of its slot).
    pub packets_sent: u64,
    pub packets_expected: u64,
    /// Audio packets listeners received, and those they decrypted (and timed): the
    /// latency sample.
    pub packets_received: u64,
    pub packets_decrypted: u64,
    pub packets_lost: u64,
    pub loss_percent: f64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub jitter_mean_ms: f64,
    pub jitter_max_ms: f64,
    pub per_edge: Vec<EdgeRow>,
    /// The edges' own count of packets sent to listeners, over the steady phase (the
    /// run's busiest window if there is none; `local` only).
    pub edge_forwarding: Option<crate::forwarding::ForwardingRate>,
    /// Distinct media addresses (edge workers' UDP ports) listeners were answered with.
    pub media_addresses: usize,
    pub processes: Vec<ProcessRow>,
    /// CPU and packets over the steady phase only (when processes were sampled).
    pub steady: Option<SteadyPhase>,
    /// When the steady phase began and ended.
    #[serde(skip)]
    pub steady_window: Option<(std::time::Instant, std::time::Instant)>,
    /// All SFU nodes' RSS when every listener had joined, and at the end: a leak shows
    /// as growth over a long `--duration`.
    pub sfu_rss_steady_start_mb: Option<f64>,
    pub sfu_rss_end_mb: Option<f64>,
    /// What the SFU's nodes dropped over the whole run, by node role and reason, and the
    /// kernel's UDP errors over it, this machine's whole (`local` only; see
    /// [`crate::forwarding::add_drops`]). A node's drop is a datagram before fan-out: one
    /// an edge drops from the core would have reached all its listeners of the channel.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// The attack run through the steady phase, if any.
    pub attack: Option<crate::attack::AttackReport>,
    pub timeline: Vec<Tick>,
}

/// Listeners that received audio, each once however often it rejoined (churn).
fn distinct_receiving<'a>(clients: impl Iterator<Item = &'a ClientReport>) -> usize {
    clients.filter(|c| c.join_time.is_some()).map(|c| c.name.as_str()).collect::<std::collections::HashSet<_>>().len()
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl Report {
    pub fn build(
        s: &Scenario,
        clients: Vec<ClientReport>,
        timeline: Vec<Tick>,
        sampler: Option<&ProcSampler>,
        churned: u64,
        run: Duration,
    ) -> Report {
        let listeners: Vec<&ClientReport> = clients.iter().filter(|c| c.listener).collect();
        let mut latency = latency_histogram();
        for c in &listeners {
            let _ = latency.add(&c.latency);
        }
        let streams = || listeners.iter().flat_map(|c| c.streams.iter());
        let expected: u64 = streams().map(|x| x.expected).sum();
        let lost: u64 = streams().map(|x| x.lost).sum();
        let jitters: Vec<f64> = streams().filter(|x| x.expected > 0).map(|x| x.jitter.as_secs_f64() * 1000.0).collect();
        let mut errors: Vec<String> =
            clients.iter().filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.name))).collect();
        let failed = errors.len();
        errors.truncate(10);
        let per_edge = (0..s.edges.len())
            .map(|edge| {
                // Placed through the core: by the edge that answered; else as spread.
                let origin = s.edges[edge].trim_end_matches('/');
                let on_edge = |c: &ClientReport| {
                    if s.via_core.is_some() {
                        c.edge_url.as_deref() == Some(origin)
                    } else {
                        c.edge == edge
                    }
                };
                let here: Vec<&&ClientReport> = listeners.iter().filter(|c| on_edge(c)).collect();
                let mut h = latency_histogram();
                for c in &here {
                    let _ = h.add(&c.latency);
                }
                let (e, l) =
                    here.iter().flat_map(|c| c.streams.iter()).fold((0, 0), |(e, l), x| (e + x.expected, l + x.lost));
                EdgeRow {
                    edge: edge + 1,
                    listeners: distinct_receiving(here.iter().map(|c| **c)),
                    loss_percent: percent(l, e),
                    p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
                }
            })
            .collect();
        let processes = sampler
            .map(|sm| {
                sm.names()
                    .zip(&sm.samples)
                    .map(|(name, samples)| {
                        let n = samples.len().max(1) as f64;
                        ProcessRow {
                            name: name.to_owned(),
                            cpu_mean_percent: samples.iter().map(|x| x.0).sum::<f64>() / n,
                            cpu_max_percent: samples.iter().map(|x| x.0).fold(0.0, f64::max),
                            rss_max_mb: samples.iter().map(|x| x.1).fold(0.0, f64::max),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Report {
            edges: s.edges.len(),
            speakers: s.speakers,
            target_listeners: s.listeners,
            listeners_joined: distinct_receiving(listeners.iter().copied()),
            failed,
            errors,
            churned,
            run_s: run.as_secs_f64(),
            join_time: Percentiles::of_durations(clients.iter().filter(|c| c.listener).filter_map(|c| c.join_time)),
            latency: Percentiles::of(&latency),
            speaker_switch: Percentiles::of_durations(listeners.iter().flat_map(|c| c.switch_times.iter().copied())),
            packets_sent: clients.iter().filter(|c| !c.listener).map(|c| c.packets_sent).sum(),
            packets_expected: expected,
            packets_received: listeners.iter().map(|c| c.packets_received).sum(),
            packets_decrypted: listeners.iter().map(|c| c.packets_decrypted).sum(),
            packets_lost: lost,
            loss_percent: percent(lost, expected),
            duplicates: streams().map(|x| x.duplicates).sum(),
            out_of_order: streams().map(|x| x.out_of_order).sum(),
            jitter_mean_ms: jitters.iter().sum::<f64>() / jitters.len().max(1) as f64,
            jitter_max_ms: jitters.iter().copied().fold(0.0, f64::max),
            per_edge,
            edge_forwarding: None,
            media_addresses: listeners
                .iter()
                .filter_map(|c| c.media_addr)
                .collect::<std::collections::HashSet<_>>()
                .len(),
            processes,
            steady: None,
            steady_window: None,
            sfu_rss_steady_start_mb: timeline
                .iter()
                .find(|t| t.joined >= (s.listeners + s.speakers) as u64)
                .and_then(|t| t.sfu_rss_mb),
            sfu_rss_end_mb: timeline.last().and_then(|t| t.sfu_rss_mb),
            drops: Default::default(),
            attack: None,
            timeline,
        }
    }

    /// The thresholds a run must meet; each miss is one line.
    pub fn check(&self, max_loss_percent: Option<f64>, max_p99: Option<Duration>) -> Vec<String> {
        let mut missed = Vec::new();
        if self.failed > 0 {
            missed.push(format!(
                "{} clients failed (first: {})",
                self.failed,
                self.errors.first().map_or("", |e| e.as_str())
            ));
        }
        if self.listeners_joined < self.target_listeners {
            missed
                .push(format!("only {} of {} listeners received audio", self.listeners_joined, self.target_listeners));
        }
        if let Some(max) = max_loss_percent {
            if self.loss_percent > max {
                missed.push(format!("loss {:.3} % is over {max} %", self.loss_percent));
            }
        }
        if let Some(max) = max_p99 {
            let max_ms = max.as_secs_f64() * 1000.0;
            if self.latency.p99_ms > max_ms {
                missed.push(format!("p99 latency {:.1} ms is over {max_ms} ms", self.latency.p99_ms));
            }
        }
        missed
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, k: &str, v: String| writeln!(f, "  {k:<26} {v}");
        let pct = |p: &Percentiles| {
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} ms ({} samples)",
                p.p50_ms, p.p90_ms, p.p99_ms, p.p99_9_ms, p.max_ms, p.count
            )
        };
        writeln!(
            f,
            "Load test: {} listeners, {} speakers, {} edges, {:.0} s",
            self.target_listeners, self.speakers, self.edges, self.run_s
        )?;
        row(
            f,
            "listeners receiving",
            format!(
                "{} / {} ({} failed, {} churned)",
                self.listeners_joined, self.target_listeners, self.failed, self.churned
            ),
        )?;
        row(f, "join time", pct(&self.join_time))?;
        row(f, "end-to-end latency", pct(&self.latency))?;
        row(
            f,
            "speaker switch",
            if self.speaker_switch.count == 0 { "none seen".into() } else { pct(&self.speaker_switch) },
        )?;
        row(
            f,
            "packets",
            format!(
                "{} sent by speakers, {} expected at listeners, {} lost ({:.3} %)",
                self.packets_sent, self.packets_expected, self.packets_lost, self.loss_percent
            ),
        )?;
        row(f, "duplicates / out of order", format!("{} / {}", self.duplicates, self.out_of_order))?;
        if self.packets_decrypted < self.packets_received {
            row(
                f,
                "decrypted (latency sample)",
                format!(
                    "{} of {} received ({:.1} %); loss, order and jitter from every header",
                    self.packets_decrypted,
                    self.packets_received,
                    percent(self.packets_decrypted, self.packets_received)
                ),
            )?;
        }
        row(f, "jitter (RFC 3550)", format!("mean {:.2} ms, max {:.2} ms", self.jitter_mean_ms, self.jitter_max_ms))?;
        writeln!(f, "\n  {:<6} {:>10} {:>10} {:>10}", "edge", "listeners", "loss %", "p99 ms")?;
        for e in &self.per_edge {
            writeln!(f, "  {:<6} {:>10} {:>10.3} {:>10.1}", e.edge, e.listeners, e.loss_percent, e.p99_ms)?;
        }
        if let Some(r) = &self.edge_forwarding {
            writeln!(
                f,
                "\n  edges forwarded {:.0} packets/s on {:.2} cores: {:.0} per CPU-second (best {:.0} s)",
                r.packets_per_s, r.cpu_cores, r.packets_per_cpu_second, r.window_s
            )?;
        }
        if !self.drops.is_empty() {
            let drops: Vec<String> = self.drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
            writeln!(f, "\n  drops over the run (the nodes' before fan-out; the kernel's): {}", drops.join(", "))?;
        }
        if let (Some(a), Some(b)) = (self.sfu_rss_steady_start_mb, self.sfu_rss_end_mb) {
            writeln!(f, "\n  SFU memory, all nodes: {a:.1} MB when all had joined, {b:.1} MB at the end")?;
        }
        if !self.processes.is_empty() {
            writeln!(f, "\n  {:<12} {:>10} {:>10} {:>10}", "process", "cpu mean %", "cpu max %", "rss MB")?;
            for p in &self.processes {
                writeln!(
                    f,
                    "  {:<12} {:>10.1} {:>10.1} {:>10.1}",
                    p.name, p.cpu_mean_percent, p.cpu_max_percent, p.rss_max_mb
                )?;
            }
        }
        if let Some(s) = &self.steady {
            let cores: Vec<String> = s.processes.iter().map(|p| format!("{} {:.2}", p.name, p.cpu_cores)).collect();
            writeln!(
                f,
                "\n  steady phase ({:.0} s): {:.0} packets/s heard; cores used: {}",
                s.seconds,
                s.packets_per_s,
                cores.join(", ")
            )?;
        }
        if let Some(a) = &self.attack {
            let kind = a.kind.map(|k| format!("{k:?}")).unwrap_or_default();
            writeln!(
                f,
                "\n  attack {kind}: {} sent at {}/s over {:.1} s, {} replies, {} sessions",
                a.sent, a.rate_per_s, a.seconds, a.replies, a.sessions
            )?;
            if !a.statuses.is_empty() {
                writeln!(f, "    HTTP statuses: {:?}", a.statuses)?;
            }
            if let Some(status) = a.honest_offer_after {
                writeln!(f, "    an honest newcomer's offer afterwards: {status}")?;
            }
            if let (Some(before), Some(after)) = (a.sfu_rss_before_mb, a.sfu_rss_after_mb) {
                writeln!(f, "    SFU memory: {before:.1} MB as it started, {after:.1} MB as it ended")?;
            }
            for (k, v) in &a.counters {
                writeln!(f, "    {k} {v}")?;
            }
            for n in a.notes.iter().chain(&a.errors) {
                writeln!(f, "    {n}")?;
            }
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}
