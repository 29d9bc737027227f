//! A load scenario: speakers, then listeners joining at a ramp, a steady phase with
//! optional churn, a live display, and the reports of every client at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_sfu::token::{unix_now, Claims, Role as TokenRole, TokenKeys};
use indicatif::{ProgressBar, ProgressStyle};
use media::dtls::DtlsIdentity;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::attack::{self, AttackPlan, AttackReport};
use crate::client::{self, ClientReport, ClientSpec, Role, Shared, SpeakerParams, TalkPattern};
use crate::procs::ProcSampler;
use crate::report::{Report, SteadyCpu, SteadyPhase, Tick};

#[derive(Clone, Debug)]
pub enum Tokens {
    /// Sign join tokens with the deployment's secret.
    Secret(String),
    /// Ask each edge for demo tokens (local edges only).
    Demo,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    /// Edge signalling base URLs; clients are spread over them in turn.
    pub edges: Vec<String>,
    pub channel: String,
    pub listeners: usize,
    pub speakers: usize,
    pub slots: usize,
    /// Steady phase after the last join.
    pub duration: Duration,
    /// Listener joins per second.
    pub ramp: f64,
    /// Listener leaves-and-rejoins per second during the steady phase.
    pub churn: f64,
    pub pattern: TalkPattern,
    pub turn: Duration,
    pub payload_size: usize,
    pub tokens: Tokens,
    pub progress: bool,
    /// An attack to run through the steady phase.
    pub attack: Option<AttackPlan>,
    /// Join every client through this core's placement (`POST` there, follow the 307)
    /// instead of spreading clients over `edges` in turn.
    pub via_core: Option<String>,
    /// Listeners decrypt one packet in this many (see `Shared::decrypt_every`).
    pub decrypt_every: u64,
    /// Listeners join and then stop reading (see `Shared::deaf`).
    pub deaf: bool,
    /// Clients join this room of a Janus VideoRoom (see `Shared::janus_room`).
    pub janus_room: Option<u64>,
    /// Listeners receive in this many threads once connected (see `Shared::pool`);
    /// `None`: each on its own task.
    pub receive_threads: Option<usize>,
}

async fn token(s: &Scenario, shared: &Shared, base: &str, name: &str, role: TokenRole) -> anyhow::Result<String> {
    match &s.tokens {
        Tokens::Secret(secret) => Ok(TokenKeys::new(secret.as_bytes()).sign(&Claims {
            sub: name.into(),
            channel: s.channel.clone(),
            role,
            exp: unix_now() + 24 * 3600,
        })),
        Tokens::Demo => {
            let role = if role == TokenRole::Speaker { "speaker" } else { "listener" };
            let url =
                format!("{}/demo/token?channel={}&name={name}&role={role}", base.trim_end_matches('/'), s.channel);
            let body = shared.offer_http().get(&url).send().await?.error_for_status()?.text().await?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            Ok(v["token"].as_str().ok_or_else(|| anyhow::anyhow!("no token from {url}"))?.to_owned())
        }
    }
}

/// How long after the last join starts the run waits for stragglers before its steady phase.
const JOIN_GRACE: Duration = Duration::from_secs(60);

struct Running {
    spec: ClientSpec,
    stop: watch::Sender<bool>,
}

pub async fn run(s: Scenario, mut sampler: Option<ProcSampler>) -> anyhow::Result<Report> {
    anyhow::ensure!(!s.edges.is_empty(), "no edges to test");
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let loopback = s.edges.iter().all(|e| {
        reqwest::Url::parse(e)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    });
    let mut shared = Shared::new(DtlsIdentity::generate()?, loopback)?;
    shared.decrypt_every = s.decrypt_every.max(1);
    shared.deaf = s.deaf;
    shared.janus_room = s.janus_room;
    if let Some(threads) = s.receive_threads.filter(|_| !s.deaf) {
        shared.pool = Some(crate::pool::ReceivePool::new(threads)?);
    }
    let shared = Arc::new(shared);
    let bar = if s.progress { ProgressBar::new(s.listeners as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} joined {pos}/{len} {msg}").expect("valid template"),
    );

    let mut tasks: JoinSet<ClientReport> = JoinSet::new();
    let mut running: Vec<Running> = Vec::new();
    let spawn = |spec: ClientSpec, tasks: &mut JoinSet<ClientReport>, running: &mut Vec<Running>| {
        let (stop, rx) = watch::channel(false);
        tasks.spawn(client::run(spec.clone(), shared.clone(), rx));
        running.push(Running { spec, stop });
    };
    for i in 0..s.speakers {
        let edge = i % s.edges.len();
        let name = format!("speaker-{i}");
        let token = token(&s, &shared, &s.edges[edge], &name, TokenRole::Speaker).await?;
        let params = SpeakerParams {
            index: i,
            speakers: s.speakers,
            pattern: s.pattern,
            turn: s.turn,
            payload_size: s.payload_size,
        };
        let spec = ClientSpec {
            name,
            edge,
            base_url: s.via_core.clone().unwrap_or_else(|| s.edges[edge].clone()),
            channel: s.channel.clone(),
            token,
            role: Role::Speaker(params),
        };
        spawn(spec, &mut tasks, &mut running);
    }

    let started = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / s.ramp.max(0.001));
    let ramp_end = started + gap * s.listeners as u32;
    // The steady phase starts when every client has joined (heard audio) or failed, or
    // when the stragglers have had JOIN_GRACE after the ramp.
    let mut end = ramp_end + JOIN_GRACE + s.duration;
    let mut steady = false;
    let mut next_join = started;
    let mut joins = 0usize;
    let churn_gap = (s.churn > 0.0).then(|| Duration::from_secs_f64(1.0 / s.churn));
    let mut next_churn = end;
    let mut next_tick = started + Duration::from_secs(1);
    let mut last_packets = 0u64;
    let mut timeline = Vec::new();
    let mut churned = 0u64;
    let (attack_stop, attack_stop_rx) = watch::channel(false);
    let mut rss_before_attack = None;
    let mut attack_task: Option<tokio::task::JoinHandle<AttackReport>> = None;
    // When the steady phase began: packets heard and each process's CPU-seconds then.
    let mut steady_mark: Option<(Instant, u64, Vec<Option<f64>>)> = None;
    let live_packets = || shared.live.packets.load(std::sync::atomic::Ordering::Relaxed);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if !steady && joins == s.listeners {
            let settled = shared.live.joined.load(std::sync::atomic::Ordering::Relaxed)
                + shared.live.failed.load(std::sync::atomic::Ordering::Relaxed);
            if settled >= (s.speakers + s.listeners) as u64 || now >= ramp_end + JOIN_GRACE {
                steady = true;
                end = now + s.duration;
                steady_mark = sampler.as_ref().map(|sm| (now, live_packets(), sm.cpu_seconds()));
                next_churn = now + churn_gap.unwrap_or_default();
            }
        }
        if steady && attack_task.is_none() {
            if let Some(plan) = s.attack.clone() {
                // SFU memory as the attack starts, to compare with its end.
                if let Some(sampler) = sampler.as_mut() {
                    sampler.sample();
                    rss_before_attack = sampler.total_rss_except(crate::procs::LOAD_GENERATOR);
                }
                attack_task = Some(tokio::spawn(attack::run(plan, shared.clone(), attack_stop_rx.clone())));
            }
        }
        if joins < s.listeners && now >= next_join {
            let edge = joins % s.edges.len();
            let name = format!("listener-{joins}");
            let token = token(&s, &shared, &s.edges[edge], &name, TokenRole::Listener).await?;
            let spec = ClientSpec {
                name,
                edge,
                base_url: s.via_core.clone().unwrap_or_else(|| s.edges[edge].clone()),
                channel: s.channel.clone(),
                token,
                role: Role::Listener { slots: s.slots },
            };
            spawn(spec, &mut tasks, &mut running);
            joins += 1;
            next_join += gap;
            continue;
        }
        if let Some(churn_gap) = churn_gap {
            if steady && now >= next_churn {
                next_churn += churn_gap;
                // A random listener leaves (DELETE) and joins again as a new session.
                let listeners: Vec<usize> = running
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| matches!(r.spec.role, Role::Listener { .. }))
                    .map(|(i, _)| i)
                    .collect();
                if let Some(&i) = listeners.get(rand::random::<u64>() as usize % listeners.len().max(1)) {
                    let r = running.swap_remove(i);
                    let _ = r.stop.send(true);
                    spawn(r.spec, &mut tasks, &mut running);
                    churned += 1;
                }
            }
        }
        if now >= next_tick {
            next_tick += Duration::from_secs(1);
            let packets = live_packets();
            let pps = packets - last_packets;
            last_packets = packets;
            let (p50, p99) = {
                let mut h = shared.live.interval_latency.lock().expect("live histogram");
                let r = (h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0);
                h.reset();
                r
            };
            if let Some(sampler) = sampler.as_mut() {
                sampler.sample();
            }
            let joined = shared.live.joined.load(std::sync::atomic::Ordering::Relaxed);
            let failed = shared.live.failed.load(std::sync::atomic::Ordering::Relaxed);
            bar.set_position(joined.saturating_sub(s.speakers as u64).min(s.listeners as u64));
            bar.set_message(format!("| {pps} pkt/s | p99 {p99:.1} ms | failed {failed}"));
            timeline.push(Tick {
                t_s: started.elapsed().as_secs_f64(),
                joined,
                packets_per_s: pps,
                p50_ms: p50,
                p99_ms: p99,
                sfu_rss_mb: sampler.as_ref().and_then(|s| s.total_rss_except(crate::procs::LOAD_GENERATOR)),
            });
        }
        let wake = [
            next_tick,
            if steady { end } else { now + Duration::from_millis(50) },
            end,
            if joins < s.listeners { next_join } else { end },
            if churn_gap.is_some() { next_churn } else { end },
        ]
        .into_iter()
        .min()
        .unwrap_or(end);
        tokio::time::sleep_until(wake.into()).await;
    }
    bar.finish_and_clear();
    let steady_window = steady.then(|| (end - s.duration, end));
    let steady_phase = steady_mark.zip(sampler.as_ref()).map(|((at, packets, cpu), sm)| {
        let seconds = at.elapsed().as_secs_f64().max(1e-3);
        let processes = sm
            .names()
            .zip(cpu.iter().zip(sm.cpu_seconds()))
            .filter_map(|(name, (before, after))| {
                Some(SteadyCpu { name: name.to_owned(), cpu_cores: (after? - (*before)?) / seconds })
            })
            .collect();
        SteadyPhase { seconds, packets_per_s: live_packets().saturating_sub(packets) as f64 / seconds, processes }
    });
    let mut attack_report = None;
    if let Some(task) = attack_task {
        let rss_after = sampler.as_mut().and_then(|sampler| {
            sampler.sample();
            sampler.total_rss_except(crate::procs::LOAD_GENERATOR)
        });
        let _ = attack_stop.send(true);
        if let Ok(Ok(mut r)) = tokio::time::timeout(Duration::from_secs(30), task).await {
            r.sfu_rss_before_mb = rss_before_attack;
            r.sfu_rss_after_mb = rss_after;
            attack_report = Some(r);
        }
    }
    for r in &running {
        let _ = r.stop.send(true);
    }
    let mut reports = Vec::new();
    let collect = async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(r) = r {
                reports.push(r);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), collect).await;
    let mut report = Report::build(&s, reports, timeline, sampler.as_ref(), churned, started.elapsed());
    report.attack = attack_report;
    report.steady = steady_phase;
    report.steady_window = steady_window;
    Ok(report)
}
