//! The directory: which edges exist, where they are, how full they are, and where the
//! next client of a channel goes. Sans-IO, fed by the core.
//!
//! Placement counts its own recent placements ("pending") until the edge's load reports
//! catch up, so a burst of joins through the core never overfills an edge: each pending
//! placement holds its place until the edge reports the listener (or it expires, for a
//! client that never arrived).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::EdgeKey;

/// How long a placement holds its place without the edge reporting it.
pub const PLACEMENT_TTL: Duration = Duration::from_secs(15);

/// What an edge says of itself in its hello.
#[derive(Clone, Debug)]
pub struct EdgeInfo {
    pub id: String,
    pub signalling_url: String,
    pub region: String,
    /// Listeners it takes per channel.
    pub capacity: u32,
    /// Sessions it takes in all.
    pub max_sessions: u32,
}

#[derive(Debug)]
struct Pending {
    channel: Arc<str>,
    listens: bool,
    at: Instant,
}

#[derive(Debug)]
struct DirEdge {
    info: EdgeInfo,
    draining: bool,
    /// Listeners per channel, as the edge last reported.
    listeners: HashMap<Arc<str>, u32>,
    pending: Vec<Pending>,
}

impl DirEdge {
    fn channel_load(&self, channel: &str) -> u32 {
        let pending = self.pending.iter().filter(|p| p.listens && &*p.channel == channel).count() as u32;
        self.listeners.get(channel).copied().unwrap_or(0) + pending
    }

    fn serves(&self, channel: &str) -> bool {
        self.listeners.contains_key(channel) || self.pending.iter().any(|p| &*p.channel == channel)
    }

    fn total_load(&self) -> u32 {
        self.listeners.values().sum::<u32>() + self.pending.len() as u32
    }

    /// Load as a share of the edge's sessions, for comparing edges of different sizes.
    fn fullness(&self) -> f64 {
        f64::from(self.total_load()) / f64::from(self.info.max_sessions.max(1))
    }
}

/// One client to place.
#[derive(Clone, Debug, Default)]
pub struct PlaceRequest {
    pub channel: String,
    /// The client listens (takes one of a channel's places on an edge).
    pub listens: bool,
    /// The client's region (`?region=`), else the core's.
    pub region: Option<String>,
    /// Edges that refused this client already (it came back from them).
    pub exclude: Vec<String>,
}

/// Where a client goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub edge_id: String,
    pub signalling_url: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("no edge has room for this client")]
    NoRoom,
    /// The channel's lease is being acquired; ask again with the store's answer.
    #[error("the channel's owner is being settled")]
    Pending,
    /// The channel's lease could not be confirmed; it is being given up.
    #[error("the channel is moving to another core")]
    Unavailable,
    #[error("the channel directory (Redis) cannot be reached")]
    StoreUnreachable,
}

/// An edge as operators see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EdgeView {
    pub id: String,
    pub url: String,
    pub region: String,
    pub capacity: u32,
    pub max_sessions: u32,
    /// Listeners reported plus placements not yet reported.
    pub load: u32,
    pub channels: usize,
    pub state: &'static str,
}

#[derive(Debug)]
pub struct Directory {
    /// The core's own region: where clients that name none are placed first.
    region: String,
    edges: HashMap<EdgeKey, DirEdge>,
}

/// `id` is `edge_id`, or one of its media workers' ids (`{edge_id}:w{k}`).
fn is_edge_or_its_worker(id: &str, edge_id: &str) -> bool {
    match id.strip_prefix(edge_id) {
        Some("") => true,
        Some(rest) => rest.strip_prefix(":w").is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

impl Directory {
    pub fn new(region: String) -> Self {
        Directory { region, edges: HashMap::new() }
    }

    pub fn edge_joined(&mut self, key: EdgeKey, info: EdgeInfo) {
        self.edges.insert(key, DirEdge { info, draining: false, listeners: HashMap::new(), pending: Vec::new() });
    }

    pub fn edge_left(&mut self, key: EdgeKey) {
        self.edges.remove(&key);
    }

    /// The edge reports `count` listeners of `channel`; a rise consumes placements made
    /// for it (those clients have arrived).
    pub fn listeners(&mut self, key: EdgeKey, channel: &Arc<str>, count: u32) {
        let Some(e) = self.edges.get_mut(&key) else { return };
        let before = e.listeners.insert(channel.clone(), count).unwrap_or(0);
        let mut arrived = count.saturating_sub(before);
        e.pending.retain(|p| {
            if arrived > 0 && p.listens && p.channel == *channel {
                arrived -= 1;
                false
            } else {
                true
            }
        });
    }

    /// A publisher of `channel` arrived at the edge: its placement is done.
    pub fn publisher_arrived(&mut self, key: EdgeKey, channel: &str) {
        let Some(e) = self.edges.get_mut(&key) else { return };
        if let Some(i) = e.pending.iter().position(|p| !p.listens && &*p.channel == channel) {
            e.pending.remove(i);
        }
    }

    /// The edge no longer serves `channel`.
    pub fn channel_left(&mut self, key: EdgeKey, channel: &str) {
        if let Some(e) = self.edges.get_mut(&key) {
            e.listeners.remove(channel);
        }
    }

    /// Marks an edge draining (no new placements) or not, with all its media workers
    /// (`{edge_id}:w{k}`); the keys of those marked.
    pub fn set_draining(&mut self, edge_id: &str, draining: bool) -> Vec<EdgeKey> {
        let mut keys: Vec<EdgeKey> = Vec::new();
        for (&key, e) in self.edges.iter_mut() {
            if is_edge_or_its_worker(&e.info.id, edge_id) {
                e.draining = draining;
                keys.push(key);
            }
        }
        keys.sort_unstable();
        keys
    }

    /// The edge told us it drains (its own SIGTERM).
    pub fn set_draining_key(&mut self, key: EdgeKey, draining: bool) {
        if let Some(e) = self.edges.get_mut(&key) {
            e.draining = draining;
        }
    }

    pub fn is_draining(&self, key: EdgeKey) -> bool {
        self.edges.get(&key).is_some_and(|e| e.draining)
    }

    /// Chooses the edge for one client and holds its place there.
    pub fn place(&mut self, req: &PlaceRequest, now: Instant) -> Result<Placed, PlaceError> {
        for e in self.edges.values_mut() {
            e.pending.retain(|p| now.saturating_duration_since(p.at) < PLACEMENT_TTL);
        }
        let channel: Arc<str> = req.channel.as_str().into();
        // An edge the client came back from is excluded with all its workers.
        let excluded = |e: &DirEdge| req.exclude.iter().any(|x| is_edge_or_its_worker(&e.info.id, x));
        let open = |e: &&DirEdge| !e.draining && !excluded(e) && e.total_load() < e.info.max_sessions;
        let has_room = |e: &&DirEdge| !req.listens || e.channel_load(&channel) < e.info.capacity;
        // An edge that serves the channel and has room: the fullest, so channels pack onto
        // few edges and the core feeds few.
        let serving = self
            .edges
            .iter()
            .filter(|(_, e)| open(e) && e.serves(&channel) && has_room(e))
            .max_by(|(ka, a), (kb, b)| {
                a.channel_load(&channel)
                    .cmp(&b.channel_load(&channel))
                    .then(b.fullness().total_cmp(&a.fullness()))
                    .then(kb.cmp(ka))
            })
            .map(|(&k, _)| k);
        // Else the least-loaded edge with room, in the client's region first.
        let region = req.region.as_deref().unwrap_or(&self.region);
        let least_loaded = |in_region: bool| {
            self.edges
                .iter()
                .filter(|(_, e)| open(e) && has_room(e) && (!in_region || e.info.region == region))
                .min_by(|(ka, a), (kb, b)| a.fullness().total_cmp(&b.fullness()).then(ka.cmp(kb)))
                .map(|(&k, _)| k)
        };
        let key = serving.or_else(|| least_loaded(true)).or_else(|| least_loaded(false)).ok_or(PlaceError::NoRoom)?;
        let e = self.edges.get_mut(&key).expect("chosen above");
        e.pending.push(Pending { channel, listens: req.listens, at: now });
        Ok(Placed { edge_id: e.info.id.clone(), signalling_url: e.info.signalling_url.clone() })
    }

    pub fn views(&self) -> Vec<EdgeView> {
        let mut out: Vec<EdgeView> = self
            .edges
            .values()
            .map(|e| EdgeView {
                id: e.info.id.clone(),
                url: e.info.signalling_url.clone(),
                region: e.info.region.clone(),
                capacity: e.info.capacity,
                max_sessions: e.info.max_sessions,
                load: e.total_load(),
                channels: e.listeners.len(),
                state: if e.draining { "draining" } else { "ready" },
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// One channel's edges and their listeners (reported plus placed).
    pub fn channel_edges(&self, channel: &str) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .edges
            .values()
            .filter(|e| e.serves(channel))
            .map(|e| (e.info.id.clone(), e.channel_load(channel)))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, region: &str) -> EdgeInfo {
        EdgeInfo {
            id: id.into(),
            signalling_url: format!("http://{id}"),
            region: region.into(),
            capacity: 25,
            max_sessions: 1000,
        }
    }

    fn listener(channel: &str) -> PlaceRequest {
        PlaceRequest { channel: channel.into(), listens: true, ..Default::default() }
    }

    #[test]
    fn a_burst_of_joins_fills_edges_to_their_cap_and_no_further() {
        let t0 = Instant::now();
        let mut d = Directory::new("local".into());
        for i in 0..25 {
            d.edge_joined(i, info(&format!("edge-{i:02}"), "local"));
        }
        // 500 joins before any edge reports anything.
        let mut per_edge: HashMap<String, u32> = HashMap::new();
        for _ in 0..500 {
            let p = d.place(&listener("big"), t0).unwrap();
            *per_edge.entry(p.edge_id).or_default() += 1;
        }
        assert_eq!(per_edge.len(), 20, "packed onto as few edges as the cap allows");
        assert!(per_edge.values().all(|&n| n == 25), "{per_edge:?}");
        // The next 125 fill the other five, then there is no room.
        for _ in 0..125 {
            d.place(&listener("big"), t0).unwrap();
        }
        assert_eq!(d.place(&listener("big"), t0), Err(PlaceError::NoRoom));
    }

    #[test]
    fn reports_replace_placements_and_stale_placements_expire() {
        let t0 = Instant::now();
        let mut d = Directory::new("local".into());
        d.edge_joined(1, info("a", "local"));
        d.edge_joined(2, info("b", "local"));
        for _ in 0..25 {
            assert_eq!(d.place(&listener("c"), t0).unwrap().edge_id, "a");
        }
        assert_eq!(d.place(&listener("c"), t0).unwrap().edge_id, "b");
        // Edge a reports its 25: the placements are consumed, the count stays 25.
        d.listeners(1, &Arc::from("c"), 25);
        assert_eq!(d.channel_edges("c"), vec![("a".into(), 25), ("b".into(), 1)]);
        // b's client never arrived: after the TTL its place is free again, and a listener
        // who left a frees a place there.
        d.listeners(1, &Arc::from("c"), 24);
        let later = t0 + PLACEMENT_TTL + Duration::from_secs(1);
        assert_eq!(d.place(&listener("c"), later).unwrap().edge_id, "a");
        assert_eq!(d.channel_edges("c"), vec![("a".into(), 25)]);
    }

    #[test]
    fn region_draining_and_exclusions_steer_placement() {
        let t0 = Instant::now();
        let mut d = Directory::new("eu".into());
        d.edge_joined(1, info("eu-1", "eu"));
        d.edge_joined(2, info("us-1", "us"));
        let mut us = listener("x");
        us.region = Some("us".into());
        assert_eq!(d.place(&us, t0).unwrap().edge_id, "us-1");
        assert_eq!(d.place(&listener("y"), t0).unwrap().edge_id, "eu-1", "the core's region by default");
        // The channel stays where it is served, even for a client of another region.
        assert_eq!(d.place(&listener("x"), t0).unwrap().edge_id, "us-1");
        d.set_draining("us-1", true);
        assert_eq!(d.place(&us, t0).unwrap().edge_id, "eu-1", "a draining edge takes nobody");
        let mut back = listener("z");
        back.exclude = vec!["eu-1".into()];
        assert_eq!(d.place(&back, t0), Err(PlaceError::NoRoom), "us-1 drains, eu-1 refused this client");
        d.set_draining("us-1", false);
        assert_eq!(d.place(&back, t0).unwrap().edge_id, "us-1");
    }

    #[test]
    fn an_edges_workers_drain_and_are_excluded_with_it() {
        let t0 = Instant::now();
        let mut d = Directory::new("eu".into());
        d.edge_joined(1, info("e1:w0", "eu"));
        d.edge_joined(2, info("e1:w1", "eu"));
        d.edge_joined(3, info("e10", "eu"));
        d.edge_joined(4, info("e1:wx", "eu"));
        assert_eq!(d.set_draining("e1", true), vec![1, 2], "not e10, not a look-alike");
        assert!(d.set_draining("e2", true).is_empty());
        d.set_draining("e1", false);
        let mut back = listener("c");
        back.exclude = vec!["e1".into(), "e1:wx".into()];
        assert_eq!(d.place(&back, t0).unwrap().edge_id, "e10");
    }
}
