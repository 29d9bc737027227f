//! How a core-edge link fares, as both ends export it: `sfu_relay_link_*` series
//! labelled by the peer node.

use std::time::Duration;

use crate::loss::LossCounts;
use crate::sender::SendStats;

/// One link seen from one end.
#[derive(Clone, Debug, Default)]
pub struct LinkHealth {
    /// The node at the other end (an edge's id at a core; a core's address at an edge).
    pub peer: String,
    pub up: bool,
    /// The edge hears nothing from the core (no heartbeat, no media) for a while and
    /// plays its own selection (edges only).
    pub stalled: bool,
    /// QUIC's smoothed round-trip time.
    pub rtt: Option<Duration>,
    /// QUIC packets sent and those QUIC declared lost.
    pub quic_packets_sent: u64,
    pub quic_packets_lost: u64,
    /// Media datagrams received from the peer: arrived, lost, repaired, duplicates.
    pub received: LossCounts,
    /// Media datagrams sent to the peer, and what our queue dropped.
    pub sent: SendStats,
    /// How long the oldest datagram waiting in our send queue has waited.
    pub queue_age: Duration,
    /// Datagrams waiting in our send queue.
    pub queue_len: usize,
    /// The loss before repair the peer last reported for what we send it.
    pub peer_reported_loss_permille: u16,
    pub repair_on: bool,
    pub repair_activations: u64,
    pub repair_copies_sent: u64,
    pub reconnects: u64,
}

impl LinkHealth {
    /// Sets the `sfu_relay_link_*` series for this link on the current metrics recorder.
    pub fn record(&self, node_labels: &[(&'static str, String)]) {
        let mut labels: Vec<(&'static str, String)> = node_labels.to_vec();
        labels.push(("peer", self.peer.clone()));
        let labels = &labels;
        metrics::gauge!("sfu_relay_link_up", labels).set(f64::from(u8::from(self.up)));
        metrics::gauge!("sfu_relay_link_stalled", labels).set(f64::from(u8::from(self.stalled)));
        if let Some(rtt) = self.rtt {
            metrics::gauge!("sfu_relay_link_rtt_seconds", labels).set(rtt.as_secs_f64());
        }
        metrics::counter!("sfu_relay_link_quic_packets_sent_total", labels).absolute(self.quic_packets_sent);
        metrics::counter!("sfu_relay_link_quic_packets_lost_total", labels).absolute(self.quic_packets_lost);
        metrics::counter!("sfu_relay_link_datagrams_sent_total", labels).absolute(self.sent.sent);
        metrics::counter!("sfu_relay_link_datagrams_received_total", labels).absolute(self.received.received);
        metrics::counter!("sfu_relay_link_datagrams_lost_total", labels).absolute(self.received.lost);
        metrics::counter!("sfu_relay_link_datagrams_repaired_total", labels).absolute(self.received.repaired);
        metrics::counter!("sfu_relay_link_datagrams_duplicate_total", labels).absolute(self.received.duplicates);
        metrics::counter!("sfu_relay_link_repair_copies_sent_total", labels).absolute(self.repair_copies_sent);
        metrics::gauge!("sfu_relay_link_repair_active", labels).set(f64::from(u8::from(self.repair_on)));
        metrics::counter!("sfu_relay_link_repair_activations_total", labels).absolute(self.repair_activations);
        metrics::gauge!("sfu_relay_link_peer_reported_loss_ratio", labels)
            .set(f64::from(self.peer_reported_loss_permille) / 1000.0);
        metrics::gauge!("sfu_relay_link_queue_age_seconds", labels).set(self.queue_age.as_secs_f64());
        metrics::gauge!("sfu_relay_link_queue_datagrams", labels).set(self.queue_len as f64);
        metrics::gauge!("sfu_relay_link_queue_max_wait_seconds", labels).set(self.sent.max_wait.as_secs_f64());
        for (reason, n) in
            [("stale", self.sent.dropped_stale), ("full", self.sent.dropped_full), ("refused", self.sent.refused)]
        {
            let mut l = labels.clone();
            l.push(("reason", reason.to_owned()));
            metrics::counter!("sfu_relay_link_queue_dropped_total", &l).absolute(n);
        }
        metrics::counter!("sfu_relay_link_reconnects_total", labels).absolute(self.reconnects);
    }
}
