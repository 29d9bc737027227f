//! The edges' own account of what they forwarded: `sfu_edge_rtp_out_total` and the
//! process CPU time from each edge's `/metrics`, sampled every second, and a window of
//! them as packets per second and per CPU-second.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// All edges' packets sent to listeners and CPU seconds, summed, at one instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at: Instant,
    pub packets_out: u64,
    pub cpu_seconds: f64,
}

/// The edges' forwarding over a window of samples.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ForwardingRate {
    pub window_s: f64,
    pub packets_per_s: f64,
    /// The edges' CPU over the window, in cores (1.0 = one core busy throughout).
    pub cpu_cores: f64,
    pub packets_per_cpu_second: f64,
}

/// The window of `width` samples with the most packets out.
pub fn best_window(samples: &[Sample], width: usize) -> Option<ForwardingRate> {
    samples
        .windows(width + 1)
        .filter_map(|w| {
            let (a, b) = (w.first()?, w.last()?);
            let secs = b.at.saturating_duration_since(a.at).as_secs_f64();
            let cpu = b.cpu_seconds - a.cpu_seconds;
            (secs > 0.0 && cpu > 0.0).then(|| ForwardingRate {
                window_s: secs,
                packets_per_s: b.packets_out.saturating_sub(a.packets_out) as f64 / secs,
                cpu_cores: cpu / secs,
                packets_per_cpu_second: b.packets_out.saturating_sub(a.packets_out) as f64 / cpu,
            })
        })
        .max_by(|x, y| x.packets_per_s.total_cmp(&y.packets_per_s))
}

/// The forwarding over the samples taken within `steady` (first to last), or, if fewer
/// than two were, over the busiest window of `fallback_width` samples of the run.
pub fn over_steady_phase(
    samples: &[Sample],
    steady: Option<(Instant, Instant)>,
    fallback_width: usize,
) -> Option<ForwardingRate> {
    let inside: Vec<Sample> = match steady {
        Some((from, to)) => samples.iter().copied().filter(|s| s.at >= from && s.at <= to).collect(),
        None => Vec::new(),
    };
    best_window(&inside, inside.len().saturating_sub(1).max(1)).or_else(|| best_window(samples, fallback_width))
}

/// The sum of the series named `name` (any labels) whose line contains `filter`, in
/// Prometheus text; `None` if there is none.
pub fn series_sum(text: &str, name: &str, filter: &str) -> Option<f64> {
    text.lines()
        .filter_map(sample_line)
        .filter(|&(n, series, _)| n == name && series.contains(filter))
        .fold(None, |sum, (_, _, v)| Some(sum.unwrap_or(0.0) + v))
}

/// One sample of Prometheus text: the series' name, the series with its labels, and the
/// value; `None` for comments and lines without a number.
pub(crate) fn sample_line(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let name = series.split('{').next().unwrap_or(series);
    Some((name, series, value.parse().ok()?))
}

/// The value of label `name` in a series such as `x{a="1",reason="b"}`.
pub(crate) fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    series.split(&format!("{name}=\"")).nth(1)?.split('"').next()
}

/// What an SFU node dropped, from its `/metrics` text, by node role and reason: the
/// edge's input and uplink drops (`sfu_edge_dropped_total`), its failed sends
/// (`sfu_edge_send_errors_total`), the core's datagrams
/// (`sfu_core_datagrams_dropped_total`) and the core's queues towards edges
/// (`sfu_relay_link_queue_dropped_total` with `role="core"`). Added into `into`; zero
/// counts are left out.
pub fn add_drops(text: &str, into: &mut BTreeMap<String, u64>) {
    for (name, series, value) in text.lines().filter_map(sample_line) {
        let key = match name {
            "sfu_edge_dropped_total" => label(series, "reason").map(|r| format!("edge {r}")),
            "sfu_edge_send_errors_total" => Some("edge send_errors".to_owned()),
            "sfu_core_datagrams_dropped_total" => Some("core datagrams".to_owned()),
            "sfu_relay_link_queue_dropped_total" if label(series, "role") == Some("core") => {
                label(series, "reason").map(|r| format!("core link queue {r}"))
            }
            _ => None,
        };
        if let (Some(key), true) = (key, value >= 1.0) {
            *into.entry(key).or_default() += value as u64;
        }
    }
}

/// The kernel's UDP error counters of this network namespace (`/proc/net/snmp`): datagrams
/// dropped for a full receive or send buffer, and all receive errors. `None` where the
/// file cannot be read.
pub fn kernel_udp_errors() -> Option<BTreeMap<String, u64>> {
    parse_udp_errors(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

fn parse_udp_errors(snmp: &str) -> Option<BTreeMap<String, u64>> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    let wanted = ["InErrors", "RcvbufErrors", "SndbufErrors"];
    let counters = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(name, _)| wanted.contains(name))
        .filter_map(|(name, value)| Some((format!("kernel udp {name}"), value.parse().ok()?)))
        .collect::<BTreeMap<_, _>>();
    (counters.len() == wanted.len()).then_some(counters)
}

/// What the kernel counted from `before` to `after`, into `into` (zero counts left out).
pub fn add_kernel_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    into: &mut BTreeMap<String, u64>,
) {
    for (name, &value) in after {
        let delta = value.saturating_sub(before.get(name).copied().unwrap_or(value));
        if delta > 0 {
            into.insert(name.clone(), delta);
        }
    }
}

/// Every node's drops (see [`add_drops`]), summed; nodes that do not answer are left out.
pub async fn drops(metrics_urls: &[String]) -> BTreeMap<String, u64> {
    // Generous: as a large run ends, an edge is busy closing its sessions.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("an HTTP client");
    let mut all = BTreeMap::new();
    for url in metrics_urls {
        match http.get(url).send().await {
            Ok(r) => add_drops(&r.text().await.unwrap_or_default(), &mut all),
            Err(e) => eprintln!("drops: could not read {url}: {e}"),
        }
    }
    all
}

/// Samples every edge's `/metrics` each second into `out` until aborted; a sample is
/// kept only when every edge answered.
pub async fn sample(metrics_urls: Vec<String>, out: Arc<Mutex<Vec<Sample>>>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("an HTTP client");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut sample = Sample { at: Instant::now(), packets_out: 0, cpu_seconds: 0.0 };
        let mut complete = true;
        for url in &metrics_urls {
            let text = match http.get(url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            match (series_sum(&text, "sfu_edge_rtp_out_total", ""), series_sum(&text, "sfu_process_cpu_seconds", "")) {
                (Some(p), Some(c)) => {
                    sample.packets_out += p as u64;
                    sample.cpu_seconds += c;
                }
                _ => complete = false,
            }
        }
        // The counters are read as each answer is made: time the sample by the last.
        sample.at = Instant::now();
        if complete {
            out.lock().expect("samples").push(sample);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_window_gives_rate_and_cost() {
        let t0 = Instant::now();
        let s = |secs: u64, packets_out: u64, cpu_seconds: f64| Sample {
            at: t0 + Duration::from_secs(secs),
            packets_out,
            cpu_seconds,
        };
        let samples = [s(0, 0, 0.0), s(1, 100, 0.1), s(2, 1100, 0.6), s(3, 2100, 1.1), s(4, 2200, 1.2)];
        let best = best_window(&samples, 2).unwrap();
        assert_eq!(best.packets_per_s, 1000.0);
        assert!((best.cpu_cores - 0.5).abs() < 1e-9);
        assert!((best.packets_per_cpu_second - 2000.0).abs() < 1e-6);
        assert_eq!(best_window(&samples[..2], 2), None);
    }

    #[test]
    fn the_steady_phase_leaves_the_ramp_out() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let s = |secs: u64, packets_out: u64, cpu_seconds: f64| Sample { at: at(secs), packets_out, cpu_seconds };
        // A ramp as busy as the steady phase but with handshakes (1 CPU-s per second), then
        // 1000 packets per CPU-second from 3 s to 6 s.
        let samples = [
            s(0, 0, 0.0),
            s(1, 500, 1.0),
            s(2, 1000, 2.0),
            s(3, 1500, 3.0),
            s(4, 2000, 3.5),
            s(5, 2500, 4.0),
            s(6, 3000, 4.5),
            s(7, 3000, 4.6),
        ];
        let steady = over_steady_phase(&samples, Some((at(3), at(6))), 2).unwrap();
        assert_eq!(steady.window_s, 3.0);
        assert!((steady.packets_per_cpu_second - 1000.0).abs() < 1e-6);
        // Too few samples inside: the run's busiest window.
        let starved = over_steady_phase(&samples, Some((at(3), at(3))), 2).unwrap();
        assert_eq!(starved, best_window(&samples, 2).unwrap());
        assert_eq!(over_steady_phase(&samples, None, 2), best_window(&samples, 2));
    }

    #[test]
    fn series_are_read_with_or_without_labels() {
        let text = "# HELP x\nsfu_edge_rtp_out_total_other 9\nsfu_edge_rtp_out_total{node=\"e\"} 42\nsfu_process_cpu_seconds 1.5\n";
        assert_eq!(series_sum(text, "sfu_edge_rtp_out_total", ""), Some(42.0));
        assert_eq!(series_sum(text, "sfu_process_cpu_seconds", ""), Some(1.5));
        assert_eq!(series_sum(text, "sfu_missing", ""), None);
        let two = "sfu_x{reason=\"a\"} 2\nsfu_x{reason=\"b\"} 3\n";
        assert_eq!(series_sum(two, "sfu_x", ""), Some(5.0));
        assert_eq!(series_sum(two, "sfu_x", "reason=\"b\""), Some(3.0));
    }

    #[test]
    fn drops_are_summed_by_role_and_reason() {
        let edge = "# HELP sfu_edge_dropped_total x\n\
            sfu_edge_dropped_total{node=\"e1\",role=\"edge\",reason=\"relay_stale\"} 3429\n\
            sfu_edge_dropped_total{node=\"e1\",role=\"edge\",reason=\"srtp_auth\"} 0\n\
            sfu_relay_link_queue_dropped_total{node=\"e1\",role=\"edge\",worker=\"0\",reason=\"stale\"} 294\n";
        let core = "sfu_core_datagrams_dropped_total{node=\"c\",role=\"core\"} 7\n\
            sfu_relay_link_queue_dropped_total{node=\"c\",role=\"core\",peer=\"127.0.0.1:1\",reason=\"stale\"} 5\n\
            sfu_relay_link_queue_dropped_total{node=\"c\",role=\"core\",peer=\"127.0.0.1:2\",reason=\"stale\"} 6\n";
        let mut all = BTreeMap::new();
        add_drops(edge, &mut all);
        add_drops(edge, &mut all);
        add_drops(core, &mut all);
        let expected = [("core datagrams", 7), ("core link queue stale", 11), ("edge relay_stale", 6858)];
        assert_eq!(all, expected.map(|(k, v)| (k.to_owned(), v)).into_iter().collect());
    }

    #[test]
    fn the_kernels_udp_errors_are_read_and_differenced() {
        let snmp = |rcvbuf: u64| {
            format!(
                "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                 Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
                 Udp: 100 2 {rcvbuf} 90 {rcvbuf} 0 0\n\
                 UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\n\
                 UdpLite: 0 0 0 0 0 0 0\n"
            )
        };
        let before = parse_udp_errors(&snmp(5)).unwrap();
        assert_eq!(before["kernel udp RcvbufErrors"], 5);
        let mut delta = BTreeMap::new();
        add_kernel_delta(&before, &parse_udp_errors(&snmp(12)).unwrap(), &mut delta);
        let expected = [("kernel udp InErrors", 7), ("kernel udp RcvbufErrors", 7)];
        assert_eq!(delta, expected.map(|(k, v)| (k.to_owned(), v)).into_iter().collect());
        assert_eq!(parse_udp_errors("Udp: InErrors\n"), None);
    }
}
