//! Sessions: admission, ICE (STUN checks), DTLS hand-off, the demultiplexing of client
//! datagrams, removal, and drain.

use super::*;

impl Edge {
    /// Whether a new session with (`listens`) from `client` could join `channel` now.
    pub fn admit(&self, channel: &str, listens: bool, client: Option<IpAddr>) -> Result<(), AdmitError> {
        if self.drain_deadline.is_some() {
            return Err(AdmitError::Draining);
        }
        if self.sessions.len() >= self.config.max_sessions {
            return Err(AdmitError::EdgeFull);
        }
        if self.pending >= self.config.max_pending_sessions {
            return Err(AdmitError::TooManyPending);
        }
        let from_client =
            client.map_or(0, |ip| self.pending_by_address.get(&node_kit::per_ip::key(ip)).copied().unwrap_or(0));
        if from_client >= self.config.max_pending_per_address {
            return Err(AdmitError::TooManyPendingFromAddress);
        }
        if listens && !self.channel_has_room(channel) {
            return Err(AdmitError::ChannelFull);
        }
        Ok(())
    }

    /// A session is no longer pending (connected or gone).
    pub(super) fn pending_done(&mut self, client: Option<IpAddr>) {
        self.pending -= 1;
        if let Some(key) = client {
            if let Some(n) = self.pending_by_address.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.pending_by_address.remove(&key);
                }
            }
        }
    }

    /// A free local speaker number for session `id` (numbers are reused after 2^20).
    pub(super) fn allocate_speaker(&mut self, id: SessionId) -> u32 {
        loop {
            let local = self.next_speaker;
            self.next_speaker = if local >= speaker::MAX_LOCAL { 1 } else { local + 1 };
            if let std::collections::hash_map::Entry::Vacant(e) = self.speakers.entry(local) {
                e.insert(id);
                return local;
            }
        }
    }

    /// Adds a session if the edge, the channel and the pending set have room. A participant
    /// at its session limit in the channel makes room by losing its oldest session.
    pub fn add_session(&mut self, new: NewSession, now: Instant) -> Result<SessionId, AdmitError> {
        let listens = !new.slots.is_empty();
        let participant_key = (new.channel.clone(), new.participant.clone());
        let oldest = self
            .by_participant
            .get(&participant_key)
            .filter(|ids| ids.len() >= self.config.max_sessions_per_participant)
            .map(|ids| ids[0]);
        if let Some(oldest) = oldest {
            self.remove_session(oldest, CloseReason::Replaced);
        }
        self.admit(&new.channel, listens, new.client_ip)?;
        let id = self.next_id;
        self.next_id += 1;
        let local = if new.publish.is_some() { self.allocate_speaker(id) } else { 0 };
        let slots = new.slots.iter().take(self.config.slots).map(|&params| ListenerSlot {
            params,
            rewriter: SlotRewriter::new(params.ssrc, rand::random(), rand::random()),
        });
        let session = Session {
            channel: new.channel.clone(),
            participant: new.participant.clone(),
            local_pwd: new.local_pwd,
            local_ufrag: new.local_ufrag.clone(),
            remote_ufrag: new.remote_ufrag,
            remote: None,
            srtp: None,
            publish: new.publish.map(|params| Publish {
                params,
                local,
                ssrc: None,
                stats: None,
                recent: VecDeque::new(),
                sent_through: None,
            }),
            slots: slots.collect(),
            rtcp_ssrc: new.rtcp_ssrc,
            created: now,
            last_seen: now,
            next_report: now + self.config.report_interval,
            link: LinkStats::default(),
            budget: SessionBudget::new(&self.config.limits, now),
            hello: HelloAssembly::default(),
            held_dtls: Vec::new(),
            dtls_retired: false,
            client: new.client_ip.map(node_kit::per_ip::key),
        };
        let slots = self.config.slots;
        let is_new = !self.channels.contains_key(&new.channel);
        let channel = self.channels.entry(new.channel.clone()).or_insert_with(|| Channel::new(slots));
        channel.members += 1;
        if listens {
            channel.listeners.push(id);
        }
        if self.config.cascade {
            let listeners = channel.listeners.len() as u32;
            match (is_new, channel.relay) {
                (true, _) => self.ask(&new.channel, None, now),
                (false, Some(r)) if listens => {
                    let speakers = channel.publishers.len() as u32;
                    let message = Message::Load { channel_id: r.channel_id, listeners, speakers };
                    self.outputs.push_back(Output::Relay { link: r.link, message });
                }
                _ => {}
            }
        }
        self.by_ufrag.insert(new.local_ufrag, id);
        self.sessions.insert(id, session);
        self.pending += 1;
        if let Some(key) = new.client_ip.map(node_kit::per_ip::key) {
            *self.pending_by_address.entry(key).or_default() += 1;
        }
        self.by_participant.entry(participant_key).or_default().push(id);
        self.counters.sessions_opened += 1;
        info!(session = id, channel = %new.channel, participant = ?new.participant, listens, "session added");
        Ok(id)
    }

    /// Ends a session (DELETE, DTLS failure, timeout); sends BYE if it was connected.
    pub fn remove_session(&mut self, id: SessionId, reason: CloseReason) {
        let Some(mut s) = self.sessions.remove(&id) else {
            return;
        };
        self.by_ufrag.remove(&s.local_ufrag);
        if !s.connected() {
            self.pending_done(s.client);
        }
        let participant_key = (s.channel.clone(), s.participant.clone());
        if let Some(ids) = self.by_participant.get_mut(&participant_key) {
            ids.retain(|&other| other != id);
            if ids.is_empty() {
                self.by_participant.remove(&participant_key);
            }
        }
        if let Some(publish) = &s.publish {
            self.speakers.remove(&publish.local);
        }
        if let Some(addr) = s.remote {
            // A newer session may have taken this address over; its mapping stays.
            if self.by_addr.get(&addr) == Some(&id) {
                self.by_addr.remove(&addr);
            }
            let ours: Vec<Ssrc> = s.slots.iter().map(|l| l.rewriter.ssrc).collect();
            let sources = if ours.is_empty() { vec![s.rtcp_ssrc] } else { ours };
            if let (Some(srtp), Some(bye)) = (s.srtp.as_mut(), rtcp_report::bye(&sources, &self.config.cname)) {
                if let Ok(data) = srtp.protect_rtcp(&bye) {
                    self.counters.rtcp_out += 1;
                    self.outputs.push_back(Output::Transmit { to: addr, data });
                }
            }
        }
        if let Some(channel) = self.channels.get_mut(&s.channel) {
            channel.listeners.retain(|&l| l != id);
            if let Some(publish) = &s.publish {
                channel.publishers.remove(&publish.local);
                channel.selector.remove(&publish.local);
            }
            channel.members -= 1;
            let (listeners, speakers) = (channel.listeners.len() as u32, channel.publishers.len() as u32);
            let empty = channel.members == 0;
            if let Some(r) = channel.relay {
                let channel_id = r.channel_id;
                let message = if empty {
                    Message::Unsubscribe { channel_id }
                } else {
                    Message::Load { channel_id, listeners, speakers }
                };
                self.outputs.push_back(Output::Relay { link: r.link, message });
            }
            if empty {
                if let Some(r) = channel.relay {
                    self.by_relay_id.remove(&(r.link, r.channel_id));
                }
                self.channels.remove(&s.channel);
            }
        }
        *self.counters.closed.entry(reason).or_default() += 1;
        info!(session = id, channel = %s.channel, reason = reason.as_str(), "session closed");
        self.outputs.push_back(Output::Closed { session: id, reason });
    }

    pub fn dtls_established(&mut self, id: SessionId, keys: &SrtpKeys, now: Instant) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.connected() {
            return;
        }
        match SrtpSession::new(keys) {
            Ok(srtp) => {
                debug!(session = id, profile = ?keys.profile, "connected");
                s.srtp = Some(srtp);
                s.last_seen = now;
                self.counters.quality.join.observe(now.saturating_duration_since(s.created).as_secs_f64());
                let client = s.client;
                self.pending_done(client);
            }
            Err(e) => {
                debug!(session = id, error = %e, "srtp set-up failed");
                self.remove_session(id, CloseReason::SrtpSetupFailed);
            }
        }
    }

    /// The shell let the session's DTLS connection go after its linger: later DTLS
    /// records are dropped here.
    pub fn dtls_retired(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.dtls_retired = true;
            self.counters.dtls_retired += 1;
        }
    }

    /// An outgoing DTLS datagram of the session's handshake task.
    pub fn send_dtls(&mut self, id: SessionId, data: Bytes) {
        if let Some(to) = self.sessions.get(&id).and_then(|s| s.remote) {
            self.outputs.push_back(Output::Transmit { to, data });
        }
    }

    /// One datagram from a client, validated in layers, cheapest first: size, first
    /// byte, the address ICE learnt, the session's rate, then per kind our own bounds
    /// checks before any library or SRTP state sees it.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        if buf.len() > MAX_DATAGRAM {
            return self.drop_packet(DropReason::Oversize);
        }
        match classify(buf) {
            PacketKind::Stun => self.handle_stun(now, from, buf),
            PacketKind::Unknown => self.drop_packet(DropReason::UnknownKind),
            kind => {
                let Some(&id) = self.by_addr.get(&from) else {
                    return self.drop_packet(DropReason::UnknownSource);
                };
                let Some(s) = self.sessions.get_mut(&id) else { return };
                if !s.budget.admit(buf.len(), now) {
                    return self.drop_packet(DropReason::RateLimited);
                }
                match kind {
                    PacketKind::Dtls => self.handle_dtls(now, id, buf),
                    PacketKind::Rtp => self.handle_rtp(now, id, buf),
                    PacketKind::Rtcp => self.handle_rtcp(now, id, buf),
                    PacketKind::Stun | PacketKind::Unknown => {}
                }
            }
        }
    }

    /// DTLS for the session's handshake task: only records a client can send, within the
    /// session's handshake allowance (and a slow rate once connected).
    pub(super) fn handle_dtls(&mut self, now: Instant, id: SessionId, buf: &[u8]) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.dtls_retired {
            return self.drop_packet(DropReason::DtlsLate);
        }
        let shape = match media::dtls_filter::inspect(buf) {
            Ok(shape) => shape,
            Err(reject) => {
                trace!(session = id, reason = reject.as_str(), "dtls refused");
                return self.drop_packet(DropReason::DtlsRejected);
            }
        };
        if !s.budget.admit_dtls(buf.len(), shape, s.connected(), now) {
            return self.drop_packet(DropReason::DtlsOverBudget);
        }
        s.last_seen = now;
        if shape.partial_hello {
            // The library reads no part of a ClientHello before we checked all of it.
            let mut step = HelloStep::Pass;
            for f in media::dtls_filter::hello_fragments(buf) {
                step = s.hello.add(&f);
                if step == HelloStep::Reject {
                    break;
                }
            }
            match step {
                HelloStep::Hold => return s.held_dtls.push(Bytes::copy_from_slice(buf)),
                HelloStep::Reject => {
                    s.held_dtls.clear();
                    return self.drop_packet(DropReason::DtlsRejected);
                }
                HelloStep::Release => {
                    for data in s.held_dtls.drain(..) {
                        self.outputs.push_back(Output::Dtls { session: id, data });
                    }
                }
                HelloStep::Pass => {}
            }
        }
        self.outputs.push_back(Output::Dtls { session: id, data: Bytes::copy_from_slice(buf) });
    }

    pub(super) fn handle_stun(&mut self, now: Instant, from: SocketAddr, buf: &[u8]) {
        let req = match BindingRequest::parse(buf) {
            Ok(r) => r,
            Err(_) => return self.drop_packet(DropReason::StunMalformed),
        };
        let Some(&id) = self.by_ufrag.get(&req.local_ufrag) else {
            return self.drop_packet(DropReason::StunUnknownUfrag);
        };
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if req.remote_ufrag != s.remote_ufrag {
            return self.drop_packet(DropReason::StunBadCredentials);
        }
        // Charged before the integrity check, which is the expensive part.
        if !s.budget.admit(buf.len(), now) {
            return self.drop_packet(DropReason::RateLimited);
        }
        let use_candidate = req.use_candidate;
        let response = match req.respond(&s.local_pwd, from) {
            Ok(r) => r,
            Err(_) => return self.drop_packet(DropReason::StunBadCredentials),
        };
        s.last_seen = now;
        // Learn the address from the first valid check; move only on a nominating one.
        if s.remote.is_none() || (use_candidate && s.remote != Some(from)) {
            if let Some(old) = s.remote.replace(from) {
                if self.by_addr.get(&old) == Some(&id) {
                    self.by_addr.remove(&old);
                }
            }
            if let Some(other) = self.by_addr.insert(from, id) {
                if other != id {
                    debug!(session = id, previous = other, "address taken over by a newer session");
                }
            }
            debug!(session = id, "ice address learnt");
        }
        self.outputs.push_back(Output::Transmit { to: from, data: Bytes::from(response) });
    }

    /// Drains the edge: no new sessions from now, and those left end at `deadline` (an
    /// earlier deadline than one already set wins). The core is told, so it stops placing
    /// clients here at once.
    pub fn drain(&mut self, deadline: Instant, now: Instant) {
        let deadline = self.drain_deadline.map_or(deadline, |d| d.min(deadline));
        if self.drain_deadline.is_none() {
            info!(sessions = self.sessions.len(), in_s = deadline.saturating_duration_since(now).as_secs(), "draining");
        }
        self.drain_deadline = Some(deadline);
        let deadline_ms = deadline.saturating_duration_since(now).as_millis().min(u128::from(u32::MAX)) as u32;
        for (&link, l) in &self.links {
            if l.up {
                self.outputs.push_back(Output::Relay { link, message: Message::Drain { deadline_ms } });
            }
        }
    }

    /// Draining, with sessions left or not.
    pub fn is_draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// Takes new sessions: not draining, and (in cascade mode) linked to a core.
    pub fn is_ready(&self) -> bool {
        self.drain_deadline.is_none() && (!self.config.cascade || self.links.values().any(|l| l.up))
    }
}
