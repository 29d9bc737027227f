//! Forwarding: who holds each slot, and one packet rewritten, written and protected for
//! every listener of a slot.

use super::*;

impl Edge {
    /// Sets who holds each slot, detaching changed slots so the next packet starts a new mapping.
    pub(super) fn set_holders(
        channel: &mut Channel,
        holders: Vec<Option<u32>>,
        sessions: &mut HashMap<SessionId, Session>,
        name: &str,
    ) {
        for (slot, (old, new)) in channel.holders.iter().zip(&holders).enumerate() {
            if old == new {
                continue;
            }
            debug!(channel = name, slot, from = ?old, to = ?new, "slot changed");
            for l in &channel.listeners {
                if let Some(ls) = sessions.get_mut(l).and_then(|s| s.slots.get_mut(slot)) {
                    ls.rewriter.detach();
                }
            }
        }
        channel.holders = holders;
    }

    /// Sends one packet on `slot` to every listener of the channel but `from`.
    pub(super) fn forward(
        &mut self,
        from: SessionId,
        channel: &str,
        slot: usize,
        packet: &Forwarded<'_>,
        now: Instant,
    ) {
        let Some(ch) = self.channels.get(channel) else { return };
        let payload = packet.payload;
        let level = packet.level;
        for &lid in &ch.listeners {
            if lid == from {
                continue;
            }
            let Some(l) = self.sessions.get_mut(&lid) else { continue };
            let (Some(to), Some(srtp)) = (l.remote, l.srtp.as_mut()) else { continue };
            let Some(ls) = l.slots.get_mut(slot) else { continue };
            let Some(out) = ls.rewriter.rewrite(packet.speaker, packet.sequence, packet.timestamp, payload.len(), now)
            else {
                continue;
            };
            let p = ls.params;
            OutHeader {
                payload_type: p.payload_type,
                marker: packet.marker,
                sequence: out.sequence,
                timestamp: out.timestamp,
                ssrc: p.ssrc,
                csrc: Some(packet.speaker),
                audio_level: p.audio_level_ext.map(|id| (id, level)),
                csrc_level: p.csrc_level_ext.map(|id| (id, level.level)),
            }
            .write(payload, self.tx.start());
            match srtp.protect_rtp_in_place(self.tx.current()) {
                Ok(()) => {
                    self.counters.rtp_out += 1;
                    self.outputs.push_back(Output::Transmit { to, data: self.tx.finish() });
                }
                Err(e) => debug!(session = lid, error = %e, "srtp protect failed"),
            }
        }
    }
}
