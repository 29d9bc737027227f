//! Ingest: a publisher's SRTP packet, authenticated and decrypted, into the channel's
//! selection, the uplink, and the edge's own listeners.

use super::*;

impl Edge {
    pub(super) fn handle_rtp(&mut self, now: Instant, id: SessionId, buf: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Some(srtp) = s.srtp.as_mut() else {
            return self.drop_packet(DropReason::NotConnected);
        };
        let Some(publish) = s.publish.as_ref() else {
            return self.drop_packet(DropReason::NotPublishing);
        };
        // The clear header is bounds-checked (CSRCs, every extension element) before
        // SRTP looks at it; SRTP keeps no state for a packet that does not authenticate.
        match RtpView::parse_protected(buf) {
            Ok(h) if h.payload_type == publish.params.payload_type => {}
            _ => return self.drop_packet(DropReason::RtpMalformed),
        }
        let mut plain = std::mem::take(&mut self.plain);
        let result = srtp.unprotect_rtp_into(buf, &mut plain);
        if result.is_ok() {
            s.last_seen = now;
            self.forward_published(now, id, &plain);
        }
        self.plain = plain;
        match result {
            Ok(()) => {}
            Err(SrtpError::Replay) => self.drop_packet(DropReason::SrtpReplay),
            Err(SrtpError::TooManySsrcs) => self.drop_packet(DropReason::TooManySsrcs),
            Err(_) => self.drop_packet(DropReason::SrtpAuth),
        }
    }

    /// An authenticated packet of a publishing session: selection, then uplink or forwarding.
    pub(super) fn forward_published(&mut self, now: Instant, id: SessionId, plain: &[u8]) {
        let view = match RtpView::parse(plain) {
            Ok(v) if !v.payload().is_empty() => v,
            _ => return self.drop_packet(DropReason::RtpMalformed),
        };
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Some(publish) = s.publish.as_mut() else { return };
        self.counters.rtp_in += 1;
        let ssrc = view.ssrc;
        let local = publish.local;
        let Some(channel) = self.channels.get_mut(&s.channel) else { return };
        let edge_number = Self::edge_number_for(&self.links, channel);
        let speaker_id = speaker::id(edge_number, local);
        if publish.ssrc != Some(ssrc) {
            // The client's SSRC is only its stream's name inside this session: a new one
            // restarts the statistics, never the speaker's identity.
            publish.ssrc = Some(ssrc);
            publish.stats = Some(ReceiveStats::new(ssrc, self.clock_base));
        }
        if channel.publishers.insert(local, id).is_none() {
            debug!(session = id, %ssrc, speaker = speaker_id, "publishing");
            if let Some(r) = channel.relay {
                let participant = s.participant.to_string();
                let message = Message::SpeakerInfo { channel_id: r.channel_id, speaker: speaker_id, participant };
                self.outputs.push_back(Output::Relay { link: r.link, message });
            }
        }
        if let Some(stats) = publish.stats.as_mut() {
            stats.on_packet(view.sequence, view.timestamp, now);
        }
        let level = publish.params.audio_level_ext.and_then(|ext| view.audio_level(ext)).unwrap_or(UNKNOWN_LEVEL);
        let channel_name = s.channel.clone();
        channel.selector.on_level(local, level, now);
        let changed = channel.selector.update(now);
        let packet = Forwarded {
            speaker: Ssrc(speaker_id),
            sequence: view.sequence,
            timestamp: view.timestamp,
            marker: view.marker,
            level,
            payload: view.payload(),
        };
        let local_mode = Self::local_mode(&self.links, self.config.cascade, channel);
        // In cascade, one copy of the payload (in the uplink arena) serves the uplink
        // datagram and the catch-up buffer.
        let mut recent_payload = None;
        if self.config.cascade {
            let uplink = channel.relay.filter(|_| channel.selector.slot_of(&local).is_some());
            if uplink.is_some() && packet.payload.len() > relay_proto::datagram::MAX_PAYLOAD {
                // The core would refuse it and count it against this edge's link.
                return self.drop_packet(DropReason::UplinkTooLarge);
            }
            let buf = self.uplink.start();
            match channel.relay.filter(|_| packet.payload.len() <= relay_proto::datagram::MAX_PAYLOAD) {
                Some(ChannelRelay { channel_id, .. }) => MediaHeader {
                    channel_id,
                    speaker: speaker_id,
                    sequence: packet.sequence,
                    timestamp: packet.timestamp,
                    level: level.level,
                    voice: level.voice,
                    marker: packet.marker,
                    slot: None,
                    selection: 0,
                }
                .encode(packet.payload, buf),
                None => buf.extend_from_slice(packet.payload),
            }
            let written = self.uplink.finish();
            recent_payload = Some(written.slice(written.len() - packet.payload.len()..));
            if let Some(ChannelRelay { link, .. }) = uplink {
                self.counters.uplink_out += 1;
                if let Some(l) = self.links.get_mut(&link).filter(|l| l.repair.is_on()) {
                    l.copies_sent += 1;
                    let copy = self.uplink.copy_of(&written, relay_proto::datagram::set_copy_mark);
                    self.outputs.push_back(Output::Uplink { link, data: written });
                    self.outputs.push_back(Output::Uplink { link, data: copy });
                } else {
                    self.outputs.push_back(Output::Uplink { link, data: written });
                }
            }
        }
        if changed && local_mode {
            let holders = own_holders(channel, edge_number, self.config.cascade);
            Self::set_holders(channel, holders, &mut self.sessions, &channel_name);
        }
        // The edge's own selected speakers reach its listeners directly, in cascade too:
        // no round trip through the core, and nothing lost while the core link blips
        // (the core's copies that follow are dropped as duplicates per slot).
        let slot = channel.holders.iter().position(|h| *h == Some(speaker_id));
        if self.config.cascade {
            if let Some(publish) = self.sessions.get_mut(&id).and_then(|s| s.publish.as_mut()) {
                if publish.recent.len() == RECENT_PACKETS {
                    publish.recent.pop_front();
                }
                publish.recent.push_back(Recent {
                    sequence: packet.sequence,
                    timestamp: packet.timestamp,
                    marker: packet.marker,
                    level,
                    payload: recent_payload.unwrap_or_default(),
                });
                // Not selected: nothing sent directly to resume from.
                publish.sent_through = slot.map(|_| packet.sequence);
            }
        }
        let Some(slot) = slot else { return };
        self.forward(id, &channel_name, slot, &packet, now);
    }
}
