//! Core links: which core serves each channel, the control messages, heartbeats and stalls,
//! and the core's datagrams in stream order to the listeners.

use super::*;

impl Edge {
    /// This edge's number at the core serving `channel` (0 standalone or unserved).
    pub(super) fn edge_number_for(links: &HashMap<LinkId, CoreLink>, channel: &Channel) -> u16 {
        channel.relay.and_then(|r| links.get(&r.link)).map_or(0, |l| l.edge_number)
    }

    /// Whether the edge's own selection decides the slots of `channel`: standalone, or in
    /// cascade while no core serves it or its core link stalls (local speakers stay
    /// audible to local listeners through a blip).
    pub(super) fn local_mode(links: &HashMap<LinkId, CoreLink>, cascade: bool, channel: &Channel) -> bool {
        !cascade || channel.relay.is_none_or(|r| links.get(&r.link).is_none_or(|l| l.stalled || !l.up))
    }

    /// A configured core: links to it are tried first for new channels. The shell opens
    /// and keeps the link and reports it with [`Edge::relay_connected`].
    pub fn add_core(&mut self, addr: String) -> LinkId {
        let link = self.next_link;
        self.next_link += 1;
        self.links.insert(link, CoreLink::new(addr, true));
        link
    }

    /// The link to a core is up, and that core numbered this edge `edge_number` (the high
    /// bits of the speaker ids of channels it serves): channels without a core ask now.
    pub fn relay_connected(&mut self, link: LinkId, edge_number: u16, now: Instant) {
        let Some(l) = self.links.get_mut(&link) else { return };
        l.up = true;
        l.edge_number = edge_number;
        l.last_heard = Some(now);
        l.stalled = false;
        l.downlink.reset_streams();
        l.reorder.clear();
        l.repair.reset();
        if l.ever_up {
            l.reconnects += 1;
        }
        l.ever_up = true;
        info!(link, core = %l.addr, edge_number, "core link up");
        let waiting: Vec<(Arc<str>, Option<LinkId>)> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.relay.is_none())
            .filter_map(|(name, ch)| match ch.ask {
                Ask::Idle => Some((name.clone(), None)),
                Ask::AwaitLink { link: l, .. } if l == link => Some((name.clone(), Some(link))),
                _ => None,
            })
            .collect();
        for (name, prefer) in waiting {
            self.ask(&name, prefer, now);
        }
    }

    /// The link is down: listeners stay; channels served there find their core again.
    pub fn relay_disconnected(&mut self, link: LinkId, now: Instant) {
        let Some(l) = self.links.get_mut(&link) else { return };
        if !l.up {
            return;
        }
        l.up = false;
        info!(link, core = %l.addr, "core link down");
        let affected: Vec<Arc<str>> = self
            .channels
            .iter()
            .filter(|(_, ch)| {
                ch.relay.is_some_and(|r| r.link == link) || matches!(ch.ask, Ask::Waiting { link: l, .. } if l == link)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in affected {
            self.detach(&name);
            self.ask(&name, None, now);
        }
    }

    /// The link new channels ask first: the first configured core that is up, else any.
    pub(super) fn home_link(&self) -> Option<LinkId> {
        let up = |seed: bool| self.links.iter().filter(|(_, l)| l.up && (l.seed || !seed)).map(|(&k, _)| k).min();
        up(true).or_else(|| up(false))
    }

    /// Sends a Subscribe for `name` on `prefer` if it is up, else on the home link.
    pub(super) fn ask(&mut self, name: &Arc<str>, prefer: Option<LinkId>, now: Instant) {
        let link = prefer.filter(|l| self.links.get(l).is_some_and(|l| l.up)).or_else(|| self.home_link());
        let Some(ch) = self.channels.get_mut(name) else { return };
        match link {
            Some(link) => {
                ch.ask = Ask::Waiting { link, since: now };
                let message = Message::Subscribe { channel: name.to_string(), listeners: ch.listeners.len() as u32 };
                self.outputs.push_back(Output::Relay { link, message });
            }
            None => ch.ask = Ask::Idle,
        }
    }

    /// The channel's media no longer comes from where it came: slots are vacated so the
    /// next selection starts new mappings and every slot stays continuous.
    pub(super) fn detach(&mut self, name: &Arc<str>) {
        let slots = self.config.slots;
        let Some(ch) = self.channels.get_mut(name) else { return };
        if let Some(r) = ch.relay.take() {
            self.by_relay_id.remove(&(r.link, r.channel_id));
            ch.selection = 0;
            ch.core_holders = vec![None; slots];
            // Until a core serves it again, the edge's own speakers are heard here.
            let holders = own_holders(ch, 0, true);
            Self::set_holders(ch, holders, &mut self.sessions, name);
        }
    }

    /// A link to `addr`, made (and asked of the shell) if there is none yet: `None` when
    /// the address is unusable or there are too many links.
    pub(super) fn link_to(&mut self, addr: &str) -> Option<(LinkId, bool)> {
        if let Some((&id, _)) = self.links.iter().find(|(_, l)| l.addr == addr) {
            return Some((id, false));
        }
        let usable = !addr.is_empty() && addr.len() <= 255 && addr.chars().all(|c| c.is_ascii_graphic());
        if !usable || self.links.len() >= MAX_CORE_LINKS {
            return None;
        }
        let link = self.next_link;
        self.next_link += 1;
        self.links.insert(link, CoreLink::new(addr.to_owned(), false));
        self.outputs.push_back(Output::OpenLink { link, addr: addr.to_owned() });
        Some((link, true))
    }

    /// Whether a core's answer about `name` on `link` is one this edge waits for: the
    /// channel is served there, or was asked there.
    pub(super) fn answers_for(&self, name: &str, link: LinkId) -> bool {
        self.channels.get(name).is_some_and(|ch| {
            ch.relay.is_some_and(|r| r.link == link) || matches!(ch.ask, Ask::Waiting { link: l, .. } if l == link)
        })
    }

    pub fn handle_relay_control(&mut self, link: LinkId, message: Message, now: Instant) {
        self.heard_from(link, now);
        match message {
            Message::Subscribed { channel, channel_id, epoch } => {
                let name = self.channels.get_key_value(channel.as_str()).map(|(k, _)| k.clone());
                let Some(name) = name else {
                    // Gone while the subscription was under way.
                    self.outputs.push_back(Output::Relay { link, message: Message::Unsubscribe { channel_id } });
                    return;
                };
                let ch = self.channels.get_mut(&name).expect("found above");
                if epoch < ch.epoch {
                    // An owner older than one already seen: fenced off.
                    self.counters.stale_epoch += 1;
                    warn!(%channel, epoch, seen = ch.epoch, link, "subscription from a stale channel owner refused");
                    self.outputs.push_back(Output::Relay { link, message: Message::Unsubscribe { channel_id } });
                    if ch.relay.is_none() {
                        ch.ask = Ask::RetryAt(now + RETRY_UNREACHABLE_OWNER);
                    }
                    return;
                }
                let new = ChannelRelay { link, channel_id };
                if let Some(old) = ch.relay.filter(|&old| old != new) {
                    if old.link != link {
                        let message = Message::Unsubscribe { channel_id: old.channel_id };
                        self.outputs.push_back(Output::Relay { link: old.link, message });
                    }
                    self.detach(&name);
                }
                let ch = self.channels.get_mut(&name).expect("found above");
                ch.relay = Some(new);
                ch.epoch = epoch;
                ch.ask = Ask::Idle;
                ch.redirects = 0;
                self.by_relay_id.insert((link, channel_id), name.clone());
                // Counts may have moved while the subscription was under way.
                let (listeners, speakers) = (ch.listeners.len() as u32, ch.publishers.len() as u32);
                self.outputs
                    .push_back(Output::Relay { link, message: Message::Load { channel_id, listeners, speakers } });
                let edge_number = self.links.get(&link).map_or(0, |l| l.edge_number);
                for (&local, sid) in &ch.publishers {
                    if let Some(s) = self.sessions.get(sid) {
                        let participant = s.participant.to_string();
                        let speaker = speaker::id(edge_number, local);
                        let message = Message::SpeakerInfo { channel_id, speaker, participant };
                        self.outputs.push_back(Output::Relay { link, message });
                    }
                }
                debug!(%channel, channel_id, epoch, link, "subscribed");
            }
            Message::Redirect { channel, core } => {
                if !self.answers_for(&channel, link) {
                    return;
                }
                let name = self.channels.get_key_value(channel.as_str()).map(|(k, _)| k.clone()).expect("checked");
                self.detach(&name);
                let redirects = {
                    let ch = self.channels.get_mut(&name).expect("checked");
                    ch.redirects = ch.redirects.saturating_add(1);
                    ch.redirects
                };
                debug!(%channel, to = ?core, link, "redirected to the owning core");
                let target = if redirects > MAX_REDIRECTS { None } else { self.link_to(&core) };
                let ch = self.channels.get_mut(&name).expect("checked");
                match target {
                    Some((target, _)) if self.links.get(&target).is_some_and(|l| l.up) => {
                        self.ask(&name, Some(target), now)
                    }
                    Some((target, true)) => ch.ask = Ask::AwaitLink { link: target, since: now },
                    // The owner is known and unreachable from here (it may have died and
                    // its lease not expired yet): ask again shortly.
                    _ => {
                        if redirects > MAX_REDIRECTS {
                            ch.redirects = 0;
                        }
                        ch.ask = Ask::RetryAt(now + RETRY_UNREACHABLE_OWNER);
                    }
                }
            }
            Message::Unavailable { channel, retry_ms } => {
                if !self.answers_for(&channel, link) {
                    return;
                }
                let name = self.channels.get_key_value(channel.as_str()).map(|(k, _)| k.clone()).expect("checked");
                self.detach(&name);
                let wait = Duration::from_millis(u64::from(retry_ms).clamp(50, 10_000));
                if let Some(ch) = self.channels.get_mut(&name) {
                    ch.ask = Ask::RetryAt(now + wait);
                }
            }
            Message::Selection { channel_id, selection, slots } => {
                let Some(name) = self.by_relay_id.get(&(link, channel_id)).cloned() else {
                    return self.drop_packet(DropReason::RelayUnknownChannel);
                };
                let Some(ch) = self.channels.get_mut(&name) else { return };
                if selection < ch.selection {
                    // A datagram of a newer selection got here first: only names are news.
                    for h in slots.into_iter().flatten() {
                        if ch.holders.contains(&Some(h.speaker)) {
                            ch.holder_names.insert(h.speaker, h.participant);
                        }
                    }
                    return;
                }
                ch.selection = selection;
                let mut holders = vec![None; self.config.slots];
                ch.holder_names.clear();
                for (slot, holder) in holders.iter_mut().zip(slots) {
                    if let Some(h) = holder {
                        *slot = Some(h.speaker);
                        ch.holder_names.insert(h.speaker, h.participant);
                    }
                }
                ch.core_holders = holders.clone();
                Self::set_holders(ch, holders, &mut self.sessions, &name);
            }
            Message::Kick { channel, participant } => {
                // Only from the core serving the channel.
                let served_there = |ch: &Channel| ch.relay.is_some_and(|r| r.link == link);
                if !self.channels.get(channel.as_str()).is_some_and(served_there) {
                    return;
                }
                let key: (Arc<str>, Arc<str>) = (channel.as_str().into(), participant.as_str().into());
                let ids = self.by_participant.get(&key).cloned().unwrap_or_default();
                info!(%channel, participant = ?participant, sessions = ids.len(), "kicked by the core");
                for id in ids {
                    self.remove_session(id, CloseReason::Kicked);
                }
            }
            Message::Drain { deadline_ms } => {
                info!(deadline_ms, link, "core asks this edge to drain");
                self.drain(now + Duration::from_millis(u64::from(deadline_ms)), now);
            }
            Message::Goodbye { reason } => info!(reason = ?reason, link, "core says goodbye"),
            Message::LinkQuality { lost_permille } => {
                if let Some(l) = self.links.get_mut(&link).filter(|_| self.config.relay_repair) {
                    let was_on = l.repair.is_on();
                    l.repair.on_report(lost_permille, now);
                    if l.repair.is_on() != was_on {
                        info!(link, core = %l.addr, lost_permille, repair = l.repair.is_on(), "repair copies on the uplink");
                    }
                }
            }
            other => debug!(?other, "unexpected message from the core"),
        }
    }

    /// Something came from the core on `link`: a stalled link is back, and its channels
    /// play the core's selection again (slots stay continuous).
    pub(super) fn heard_from(&mut self, link: LinkId, now: Instant) {
        let Some(l) = self.links.get_mut(&link) else { return };
        l.last_heard = Some(now);
        if !l.stalled {
            return;
        }
        l.stalled = false;
        info!(link, core = %l.addr, "core link heard again: the core's selection plays");
        for (name, ch) in self.channels.iter_mut().filter(|(_, ch)| ch.relay.is_some_and(|r| r.link == link)) {
            let holders = ch.core_holders.clone();
            Self::set_holders(ch, holders, &mut self.sessions, name);
        }
    }

    /// Every `QUALITY_INTERVAL`: tells each core what its datagrams lost before repair.
    pub(super) fn report_quality(&mut self, now: Instant) {
        if now < self.next_quality {
            return;
        }
        self.next_quality = now + QUALITY_INTERVAL;
        let mut idle_held = Vec::new();
        for (&link, l) in self.links.iter_mut() {
            let mut out = Vec::new();
            l.reorder.sweep(now, &mut out);
            idle_held.extend(out.into_iter().map(|d| (link, d)));
        }
        for (link, d) in idle_held {
            self.deliver_relay(link, &d, now);
        }
        for (&link, l) in self.links.iter_mut().filter(|(_, l)| l.up) {
            l.downlink.sweep(now);
            let interval = l.downlink.take_interval();
            if interval.received + interval.lost > 0 {
                let message = Message::LinkQuality { lost_permille: interval.raw_loss_permille() };
                self.outputs.push_back(Output::Relay { link, message });
            }
        }
    }

    /// Each core link's state, loss and repair.
    pub fn core_links(&self) -> Vec<CoreLinkView> {
        self.links
            .iter()
            .map(|(&link, l)| CoreLinkView {
                link,
                core: l.addr.clone(),
                up: l.up,
                stalled: l.stalled,
                downlink: l.downlink.counts(),
                uplink_loss_permille: l.repair.reported_permille,
                repair_on: l.repair.is_on(),
                repair_activations: l.repair.activations,
                copies_sent: l.copies_sent,
                reconnects: l.reconnects,
                reorder: l.reorder.counts,
            })
            .collect()
    }

    /// Links the core has been silent on for `LINK_STALL`: their channels fall back to
    /// this edge's own selection.
    pub(super) fn find_stalls(&mut self, now: Instant) {
        for (&link, l) in self.links.iter_mut() {
            let silent = l.last_heard.is_some_and(|t| now.saturating_duration_since(t) >= LINK_STALL);
            if !l.up || l.stalled || !silent {
                continue;
            }
            l.stalled = true;
            self.counters.link_stalls += 1;
            warn!(link, core = %l.addr, "core link stalls: serving this edge's own speakers until it is back");
            for (name, ch) in self.channels.iter_mut().filter(|(_, ch)| ch.relay.is_some_and(|r| r.link == link)) {
                let holders = own_holders(ch, l.edge_number, true);
                Self::set_holders(ch, holders, &mut self.sessions, name);
            }
        }
    }

    /// Channels whose ask timed out or whose retry is due ask again.
    pub(super) fn ask_again(&mut self, now: Instant) {
        let due: Vec<Arc<str>> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.relay.is_none())
            .filter(|(_, ch)| match ch.ask {
                Ask::Idle => false,
                Ask::Waiting { since, .. } | Ask::AwaitLink { since, .. } => {
                    now.saturating_duration_since(since) >= ASK_TIMEOUT
                }
                Ask::RetryAt(at) => now >= at,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.ask(&name, None, now);
        }
    }

    /// A datagram from the core: a selected speaker's packet for this edge's listeners.
    pub fn handle_relay_datagram(&mut self, link: LinkId, data: &Bytes, now: Instant) {
        self.heard_from(link, now);
        if let Some(seq) = relay_proto::datagram::heartbeat_seq(data) {
            if let Some(l) = self.links.get_mut(&link) {
                let (channel, speaker) = relay_proto::datagram::HEARTBEAT_STREAM;
                l.downlink.on_datagram(channel, speaker, seq, false, now);
            }
            return;
        }
        let header = match MediaHeader::parse(data) {
            Ok(h) => h,
            Err(_) => return self.drop_packet(DropReason::RelayMalformed),
        };
        // Only the channel's current owner link maps: an old owner's media is dropped here.
        if !self.by_relay_id.contains_key(&(link, header.channel_id)) {
            return self.drop_packet(DropReason::RelayUnknownChannel);
        }
        let Some(l) = self.links.get_mut(&link) else { return };
        let copy = relay_proto::datagram::is_copy(data);
        if !l.downlink.on_datagram(header.channel_id, header.speaker, header.sequence, copy, now) {
            self.counters.relay_duplicates += 1;
            return;
        }
        // Each stream goes on in sequence order (a packet after a hole waits briefly for
        // the hole's repair copy or late packet).
        let mut ready = std::mem::take(&mut self.relay_ready);
        l.reorder.push((header.channel_id, header.speaker), header.sequence, data.clone(), now, &mut ready);
        for d in ready.drain(..) {
            self.deliver_relay(link, &d, now);
        }
        self.relay_ready = ready;
    }

    /// Held datagrams whose hole was given up go on.
    pub(super) fn release_held(&mut self, now: Instant) {
        let mut ready = std::mem::take(&mut self.relay_ready);
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            if let Some(l) = self.links.get_mut(&link) {
                l.reorder.poll(now, &mut ready);
            }
            for d in ready.drain(..) {
                self.deliver_relay(link, &d, now);
            }
        }
        self.relay_ready = ready;
    }

    /// A core datagram in its stream's order: onto its slot, to every listener.
    pub(super) fn deliver_relay(&mut self, link: LinkId, data: &Bytes, now: Instant) {
        let Ok((header, payload)) = MediaHeader::decode(data) else { return };
        let Some(name) = self.by_relay_id.get(&(link, header.channel_id)).cloned() else {
            return self.drop_packet(DropReason::RelayUnknownChannel);
        };
        let slots = self.config.slots;
        let Some(ch) = self.channels.get_mut(&name) else { return };
        let slot = match header.slot.map(usize::from) {
            // The core says which slot, as of which selection: a newer selection than the
            // edge knows takes effect with this packet (the selection message may still be
            // on its way), so a new speaker's first words are not dropped.
            Some(slot) if slot < slots => {
                if header.selection > ch.selection && ch.core_holders[slot] != Some(header.speaker) {
                    let mut holders = ch.core_holders.clone();
                    for h in holders.iter_mut().filter(|h| **h == Some(header.speaker)) {
                        *h = None;
                    }
                    holders[slot] = Some(header.speaker);
                    ch.selection = header.selection;
                    ch.core_holders = holders.clone();
                    Self::set_holders(ch, holders, &mut self.sessions, &name);
                }
                if ch.holders[slot] != Some(header.speaker) {
                    return self.drop_packet(DropReason::RelayNotSelected);
                }
                slot
            }
            _ => match ch.holders.iter().position(|h| *h == Some(header.speaker)) {
                Some(slot) => slot,
                None => return self.drop_packet(DropReason::RelayNotSelected),
            },
        };
        let ch = &self.channels[&name];
        self.counters.relay_in += 1;
        // A local speaker's own session never gets its voice back.
        let edge_number = self.links.get(&link).map_or(0, |l| l.edge_number);
        let from = if speaker::edge_of(header.speaker) == edge_number {
            ch.publishers.get(&speaker::local_of(header.speaker)).copied().unwrap_or(0)
        } else {
            0
        };
        if let Some(publish) = self.sessions.get_mut(&from).and_then(|s| s.publish.as_mut()) {
            // This edge's own speaker: its listeners get it directly. The core's copy
            // only says it is selected; what it said since then goes out now, in order.
            if publish.sent_through.is_some_and(|t| seq_at_or_after(t, header.sequence)) {
                return;
            }
            let catch_up: Vec<Recent> = publish
                .recent
                .iter()
                .filter(|r| seq_at_or_after(r.sequence, header.sequence))
                .filter(|r| publish.sent_through.is_none_or(|t| !seq_at_or_after(t, r.sequence)))
                .cloned()
                .collect();
            if let Some(last) = catch_up.last() {
                publish.sent_through = Some(last.sequence);
                for r in &catch_up {
                    let packet = Forwarded {
                        speaker: Ssrc(header.speaker),
                        sequence: r.sequence,
                        timestamp: r.timestamp,
                        marker: r.marker,
                        level: r.level,
                        payload: &r.payload,
                    };
                    self.forward(from, &name, slot, &packet, now);
                }
                return;
            }
        }
        let packet = Forwarded {
            speaker: Ssrc(header.speaker),
            sequence: header.sequence,
            timestamp: header.timestamp,
            marker: header.marker,
            level: AudioLevel { level: header.level, voice: header.voice },
            payload: &payload,
        };
        self.forward(from, &name, slot, &packet, now);
    }
}
