//! RTCP: feedback from clients, and the reports this edge sends them.

use super::*;

impl Edge {
    pub(super) fn handle_rtcp(&mut self, now: Instant, id: SessionId, buf: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let Some(srtp) = s.srtp.as_mut() else {
            return self.drop_packet(DropReason::NotConnected);
        };
        // Only the first header is in the clear: its length must fit before the trailer.
        if !rtcp_report::protected_header_fits(buf, srtp.profile().rtcp_trailer_len()) {
            return self.drop_packet(DropReason::RtcpMalformed);
        }
        let result = srtp.unprotect_rtcp_into(buf, &mut self.plain);
        match result {
            Ok(()) => {}
            Err(SrtpError::Replay) => return self.drop_packet(DropReason::SrtpReplay),
            Err(SrtpError::TooManySsrcs) => return self.drop_packet(DropReason::TooManySsrcs),
            Err(_) => return self.drop_packet(DropReason::SrtpAuth),
        }
        s.last_seen = now;
        let feedback = match rtcp_report::parse_feedback(&self.plain) {
            Ok(f) => f,
            Err(_) => return self.drop_packet(DropReason::RtcpMalformed),
        };
        self.counters.rtcp_in += 1;
        let ntp_now = self.ntp.ntp(now);
        let mut bye = None;
        for f in feedback {
            match f {
                Feedback::SenderReport { ssrc, ntp } => {
                    if let Some(stats) = s.publish.as_mut().and_then(|p| p.stats.as_mut()).filter(|st| st.ssrc == ssrc)
                    {
                        stats.on_sender_report(ntp, now);
                    }
                }
                Feedback::Report(block) => {
                    if s.slots.iter().any(|l| l.rewriter.ssrc.0 == block.ssrc) {
                        s.link.remote_lost = block.total_lost;
                        s.link.remote_jitter_ms = f64::from(block.jitter) * 1000.0 / f64::from(OPUS_CLOCK_RATE);
                        let quality = &mut self.counters.quality;
                        quality.listener_loss.observe(f64::from(block.fraction_lost) / 256.0);
                        quality.listener_jitter.observe(f64::from(block.jitter) / f64::from(OPUS_CLOCK_RATE));
                        if let Some(rtt) = rtcp_report::round_trip_time(&block, ntp_now) {
                            s.link.rtt = Some(rtt);
                            quality.listener_rtt.observe(rtt.as_secs_f64());
                        }
                    }
                }
                Feedback::Nack { lost, .. } => self.counters.nacks_in += u64::from(lost),
                Feedback::Bye(ssrc) => {
                    if let Some(publish) = s.publish.as_ref().filter(|p| p.ssrc == Some(ssrc)) {
                        bye = Some(publish.local);
                    }
                }
            }
        }
        if let Some(local) = bye {
            let channel = s.channel.clone();
            if let Some(ch) = self.channels.get_mut(&channel) {
                ch.selector.remove(&local);
                if Self::local_mode(&self.links, self.config.cascade, ch) {
                    let holders = own_holders(ch, Self::edge_number_for(&self.links, ch), self.config.cascade);
                    Self::set_holders(ch, holders, &mut self.sessions, &channel);
                }
            }
        }
    }

    pub(super) fn send_reports(&mut self, id: SessionId, now: Instant) {
        let ntp = self.ntp.ntp(now);
        let cname = &self.config.cname;
        let Some(s) = self.sessions.get_mut(&id) else { return };
        s.next_report = now + self.config.report_interval;
        let (Some(to), Some(srtp)) = (s.remote, s.srtp.as_mut()) else { return };
        let mut blocks = Vec::new();
        if let Some(publish) = s.publish.as_mut() {
            if let Some(stats) = publish.stats.as_mut() {
                blocks.push(stats.report_block(now));
                s.link.publish_lost = stats.lost();
                s.link.publish_jitter_ms = stats.jitter().as_secs_f64() * 1000.0;
            }
        }
        let mut reports = Vec::new();
        for ls in &s.slots {
            let Some((ts, at)) = ls.rewriter.last_sent() else { continue };
            let elapsed = now.saturating_duration_since(at);
            let rtp_time =
                ts.wrapping_add((elapsed.as_micros() as u64 * u64::from(OPUS_CLOCK_RATE) / 1_000_000) as u32);
            let info = SenderInfo {
                ssrc: ls.rewriter.ssrc,
                ntp,
                rtp_time,
                packets: ls.rewriter.packets_sent,
                octets: ls.rewriter.octets_sent,
            };
            reports.extend(rtcp_report::sender_report(info, std::mem::take(&mut blocks), cname));
        }
        if !blocks.is_empty() {
            let sender = s.slots.first().map_or(s.rtcp_ssrc, |l| l.rewriter.ssrc);
            reports.extend(rtcp_report::receiver_report(sender, blocks, cname));
        }
        for r in reports {
            if let Ok(data) = srtp.protect_rtcp(&r) {
                self.counters.rtcp_out += 1;
                self.outputs.push_back(Output::Transmit { to, data });
            }
        }
    }

    pub fn link_stats(&self, id: SessionId) -> Option<LinkStats> {
        self.sessions.get(&id).map(|s| s.link)
    }
}
