//! Every series a node exports, with its kind and help text: the `# HELP` lines of
//! `/metrics`, and the list the README's table, the alert rules and the dashboard are
//! checked against.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Rendered by the node itself (`node_kit::histogram`), with `_bucket`, `_sum`, `_count`.
    Histogram,
}

pub struct Series {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Series {
    Series { name, kind: Kind::Counter, help }
}

const fn gauge(name: &'static str, help: &'static str) -> Series {
    Series { name, kind: Kind::Gauge, help }
}

const fn histogram(name: &'static str, help: &'static str) -> Series {
    Series { name, kind: Kind::Histogram, help }
}

pub const SERIES: &[Series] = &[
    gauge("sfu_node_ready", "1 while the node is ready for new work (as its /readyz says)."),
    gauge("sfu_edge_sessions", "Sessions on the edge."),
    gauge("sfu_edge_session_capacity", "Sessions the edge accepts in all."),
    gauge("sfu_edge_workers", "Media workers of the edge (each its own thread of work, UDP port and core links)."),
    gauge("sfu_edge_worker_sessions", "Sessions on each media worker of the edge."),
    counter("sfu_edge_sessions_opened_total", "Sessions admitted."),
    counter("sfu_edge_sessions_closed_total", "Sessions ended, by reason."),
    counter(
        "sfu_edge_join_refusals_total",
        "Offers that got no session here, by reason (some were sent back to the core).",
    ),
    counter("sfu_edge_rtp_in_total", "RTP packets from publishers that authenticated."),
    counter("sfu_edge_rtp_out_total", "RTP packets sent to listeners."),
    counter("sfu_edge_rtcp_in_total", "RTCP packets from clients that authenticated."),
    counter("sfu_edge_rtcp_out_total", "RTCP packets sent to clients."),
    counter("sfu_edge_nacks_in_total", "NACKs from clients."),
    counter("sfu_edge_uplink_out_total", "Media datagrams uplinked to the core."),
    counter("sfu_edge_relay_in_total", "Media datagrams from the core forwarded to listeners."),
    counter("sfu_edge_dropped_total", "Input dropped, by reason."),
    counter("sfu_edge_panics_total", "Panics contained by the edge (each closed one session)."),
    counter("sfu_process_panics_total", "Every panic the process saw, library tasks' included."),
    gauge("sfu_process_cpu_seconds", "CPU time the process used, user and system, in seconds (rate() it)."),
    gauge("sfu_process_resident_memory_bytes", "Resident memory of the process."),
    gauge("sfu_process_open_fds", "File descriptors the process holds open."),
    gauge("sfu_process_max_fds", "The process's limit on open file descriptors."),
    counter("sfu_edge_send_errors_total", "UDP sends to clients that failed (the socket refused them)."),
    histogram("sfu_edge_join_seconds", "Time from an admitted offer to SRTP ready (ICE and DTLS done)."),
    histogram("sfu_edge_listener_loss_ratio", "Loss listeners report (RTCP fraction lost), per report."),
    histogram("sfu_edge_listener_jitter_seconds", "Interarrival jitter listeners report, per report."),
    histogram("sfu_edge_listener_rtt_seconds", "Round-trip time to listeners, from their reports."),
    counter("sfu_edge_dtls_retired_total", "DTLS connections let go after their linger (sessions go on)."),
    histogram(
        "sfu_edge_forward_seconds",
        "Time media spends in the edge: from its read (socket batch or core link) to its last send.",
    ),
    gauge("sfu_edge_input_queue_depth", "Commands and core datagrams waiting for the media task."),
    counter("sfu_edge_offers_rate_limited_total", "Offers refused with 429."),
    counter("sfu_edge_stale_epoch_total", "Subscriptions refused from a core with an older lease epoch."),
    counter("sfu_edge_link_stalls_total", "Times a core link fell silent and the edge played its own selection."),
    gauge("sfu_http_connections", "HTTP connections open."),
    counter("sfu_http_connections_refused_total", "HTTP connections closed at accept, over a cap."),
    counter("sfu_http_header_timeouts_total", "HTTP connections cut for sending headers too slowly."),
    counter("sfu_http_responses_total", "HTTP responses by status (refusals: 4xx and 5xx)."),
    gauge("sfu_core_edges", "Edges linked to the core."),
    gauge("sfu_core_channels", "Channels the core serves."),
    gauge("sfu_core_listeners", "Listeners the edges report for the core's channels."),
    counter("sfu_core_datagrams_in_total", "Media datagrams from edges."),
    counter("sfu_core_datagrams_out_total", "Media datagrams fanned out to edges."),
    counter("sfu_core_datagrams_dropped_total", "Media datagrams dropped on the way to an edge."),
    counter("sfu_core_selection_changes_total", "Active-speaker selection changes."),
    histogram(
        "sfu_core_forward_seconds",
        "Time a datagram spends in the core: from its read off an edge link to its last copy handed to QUIC.",
    ),
    counter("sfu_core_placement_refusals_total", "Placement requests answered without a redirect, by reason."),
    gauge("sfu_core_input_queue_depth", "Commands and edge datagrams waiting for the core's task."),
    counter("sfu_core_refused_total", "Input the core refused, by reason."),
    counter("sfu_core_links_closed_misbehaving_total", "Edge links closed for a stream of malformed input."),
    counter("sfu_core_leases_acquired_total", "Channel leases taken."),
    counter("sfu_core_leases_lost_total", "Channels given up (lease lost or not confirmed in time)."),
    counter("sfu_core_redirects_total", "Edges sent to the channel's owning core."),
    gauge("sfu_core_lease_store_reachable", "1 while the lease store answers renewals."),
    gauge("sfu_relay_link_up", "1 while the core-edge link is connected."),
    gauge("sfu_relay_link_stalled", "1 while the edge hears nothing from the core on the link."),
    gauge("sfu_relay_link_rtt_seconds", "QUIC's smoothed round-trip time of the link."),
    counter("sfu_relay_link_quic_packets_sent_total", "QUIC packets sent on the link."),
    counter("sfu_relay_link_quic_packets_lost_total", "QUIC packets QUIC declared lost on the link."),
    counter("sfu_relay_link_datagrams_sent_total", "Media datagrams and heartbeats handed to QUIC."),
    counter("sfu_relay_link_datagrams_received_total", "Media datagrams and heartbeats that arrived from the peer."),
    counter("sfu_relay_link_datagrams_lost_total", "Datagrams from the peer that never arrived."),
    counter("sfu_relay_link_datagrams_repaired_total", "Datagrams from the peer that arrived only as a repair copy."),
    counter("sfu_relay_link_datagrams_duplicate_total", "Second copies from the peer dropped."),
    gauge("sfu_relay_link_peer_reported_loss_ratio", "Loss before repair the peer last reported for what we send."),
    gauge("sfu_relay_link_repair_active", "1 while repair copies are sent on the link."),
    counter("sfu_relay_link_repair_activations_total", "Times repair copies were turned on."),
    counter("sfu_relay_link_repair_copies_sent_total", "Repair copies sent on the link."),
    gauge("sfu_relay_link_queue_age_seconds", "How long the oldest datagram in the link's send queue has waited."),
    gauge("sfu_relay_link_queue_datagrams", "Datagrams waiting in the link's send queue (repair copies included)."),
    gauge("sfu_relay_link_queue_max_wait_seconds", "The longest a datagram waited in the link's send queue."),
    counter("sfu_relay_link_queue_dropped_total", "Datagrams dropped in the link's send queue, by reason."),
    counter("sfu_relay_link_reconnects_total", "Times the link came up again."),
];

/// Sets the help text of every series on the current recorder (call once, inside
/// `metrics::with_local_recorder`).
pub fn describe() {
    for s in SERIES {
        match s.kind {
            Kind::Counter => metrics::describe_counter!(s.name, s.help),
            Kind::Gauge => metrics::describe_gauge!(s.name, s.help),
            Kind::Histogram => {}
        }
    }
}

/// Sets counter `name` to each of `counts`, labelled with `labels` and `key` (a reason,
/// a status) on the current recorder.
pub fn counters_by<K: ToString>(
    name: &'static str,
    labels: &[(&'static str, String)],
    key: &'static str,
    counts: impl IntoIterator<Item = (K, u64)>,
) {
    for (value, n) in counts {
        let mut l = labels.to_vec();
        l.push((key, value.to_string()));
        metrics::counter!(name, &l).absolute(n);
    }
}

/// The series `name` belongs to (a histogram's `_bucket`, `_sum` and `_count` included).
pub fn find(name: &str) -> Option<&'static Series> {
    SERIES.iter().find(|s| s.name == name).or_else(|| {
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix))?;
        SERIES.iter().find(|s| s.name == base && s.kind == Kind::Histogram)
    })
}

/// A Prometheus recorder with every series described.
pub fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, describe);
    recorder
}
