//! An edge's media workers: each is a whole [`Edge`](crate::edge::Edge) with its own UDP
//! socket, task and core links, serving its own sessions; signalling places each new
//! session on one. Standalone, a channel's sessions share a worker (the one that already
//! serves it), so a publisher and its listeners never cross between workers; new
//! channels go to the least loaded. In cascade mode each worker is one more edge to the
//! core, with its own signalling URL (`{url}/w/{k}`), so the core's directory places
//! clients on workers exactly as it places them on edges; a client that comes to the
//! edge directly goes to the least loaded worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use relay_proto::health::LinkHealth;

use crate::edge::{AdmitError, ChannelView, Counters, EdgeConfig, NewSession, SessionId};
use crate::server::{EdgeHandle, HandleError, Readiness, WorkerLoad};

/// The edge's workers, as signalling and the process see them (cheap to clone).
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    handles: Vec<EdgeHandle>,
    /// The edge's whole configuration (each worker has its share of the session limits).
    config: Arc<EdgeConfig>,
    /// Held while a session's worker is chosen and counted, so two first joins of a
    /// channel share a worker.
    placing: std::sync::Mutex<()>,
}

/// Where a new session went.
#[derive(Clone, Copy, Debug)]
pub struct Placed {
    pub worker: usize,
    pub session: SessionId,
    /// The worker's ICE candidate, for the answer.
    pub candidate: SocketAddr,
}

impl Workers {
    /// `handles` must not be empty.
    pub fn new(handles: Vec<EdgeHandle>, config: EdgeConfig) -> Self {
        assert!(!handles.is_empty(), "an edge has at least one worker");
        Workers { inner: Arc::new(Inner { handles, config: Arc::new(config), placing: Default::default() }) }
    }

    pub fn len(&self) -> usize {
        self.inner.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.inner.config
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        self.inner.handles[0].fingerprint()
    }

    /// Worker 0's UDP address (the first of the edge's media ports).
    pub fn udp_addr(&self) -> SocketAddr {
        self.inner.handles[0].udp_addr
    }

    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.inner.handles.iter().map(|h| h.udp_addr).collect()
    }

    /// Commands waiting for each worker's task, summed.
    pub fn input_queue_depth(&self) -> usize {
        self.inner.handles.iter().map(EdgeHandle::input_queue_depth).sum()
    }

    /// Admits a session on `worker` (the core placed it there), or on the worker that
    /// serves its channel, or on the least loaded one.
    pub async fn add_session(
        &self,
        worker: Option<usize>,
        new: NewSession,
        resource: String,
        peer_fingerprint: [u8; 32],
    ) -> Result<Result<Placed, AdmitError>, HandleError> {
        let handles = &self.inner.handles;
        let worker = match worker {
            Some(k) => {
                let k = k.min(handles.len() - 1);
                handles[k].reserve(&new);
                k
            }
            None => {
                // Chosen and counted at once, so two first joins of a channel agree.
                let _placing = self.inner.placing.lock().expect("placement");
                let loads: Vec<WorkerLoad> = handles.iter().map(|h| h.load(&new.channel)).collect();
                let k = choose(&loads, self.inner.config.cascade);
                handles[k].reserve(&new);
                k
            }
        };
        self.submit(worker, new, resource, peer_fingerprint).await
    }

    async fn submit(
        &self,
        worker: usize,
        new: NewSession,
        resource: String,
        peer_fingerprint: [u8; 32],
    ) -> Result<Result<Placed, AdmitError>, HandleError> {
        let handle = &self.inner.handles[worker];
        let admitted = handle.submit(new, resource, peer_fingerprint).await?;
        Ok(admitted.map(|session| Placed { worker, session, candidate: handle.candidate }))
    }

    /// Ends the session `resource` names, on whichever worker has it.
    pub async fn remove_session(&self, resource: String) -> Result<bool, HandleError> {
        for h in &self.inner.handles {
            if h.remove_session(resource.clone()).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The channel as this edge serves it, over all workers.
    pub async fn channel_view(&self, name: String) -> Result<Option<ChannelView>, HandleError> {
        let views = join_all(self.inner.handles.iter().map(|h| h.channel_view(name.clone()))).await;
        let mut merged: Option<ChannelView> = None;
        for view in views {
            let Some(view) = view? else { continue };
            match &mut merged {
                None => merged = Some(view),
                Some(m) => {
                    m.listeners += view.listeners;
                    for s in view.speakers {
                        if !m.speakers.iter().any(|have| have.id == s.id) {
                            m.speakers.push(s);
                        }
                    }
                    m.speakers.sort_by(|a, b| a.participant.cmp(&b.participant));
                }
            }
        }
        Ok(merged)
    }

    /// Each worker's counters and sessions.
    pub async fn stats_by_worker(&self) -> Result<Vec<(Counters, usize)>, HandleError> {
        join_all(self.inner.handles.iter().map(EdgeHandle::stats)).await.into_iter().collect()
    }

    /// The edge's counters (all workers') and sessions.
    pub async fn stats(&self) -> Result<(Counters, usize), HandleError> {
        Ok(merged(&self.stats_by_worker().await?))
    }

    /// Each worker's core links.
    pub async fn links(&self) -> Result<Vec<Vec<LinkHealth>>, HandleError> {
        join_all(self.inner.handles.iter().map(EdgeHandle::links)).await.into_iter().collect()
    }

    /// Drains every worker.
    pub async fn drain(&self, deadline: Duration) -> Result<(), HandleError> {
        for h in &self.inner.handles {
            h.drain(deadline).await?;
        }
        Ok(())
    }

    /// Ready when every worker is; draining when any is; sessions of all.
    pub async fn readiness(&self) -> Result<Readiness, HandleError> {
        let all = join_all(self.inner.handles.iter().map(EdgeHandle::readiness)).await;
        let mut merged = Readiness { ready: true, draining: false, sessions: 0 };
        for r in all {
            let r = r?;
            merged.ready &= r.ready;
            merged.draining |= r.draining;
            merged.sessions += r.sessions;
        }
        Ok(merged)
    }
}

/// Workers' counters and sessions as one edge's.
pub fn merged(by_worker: &[(Counters, usize)]) -> (Counters, usize) {
    let mut counters = Counters::default();
    let mut sessions = 0;
    for (c, s) in by_worker {
        counters.absorb(c);
        sessions += s;
    }
    (counters, sessions)
}

/// The worker for a session of a channel. Standalone, a channel never leaves its worker
/// (its selection lives there): the one with the channel's sessions, else the ready one
/// with fewest sessions. In cascade each worker hears the channel from the core, so
/// sessions go to the ready worker with fewest sessions and room in the channel: the
/// workers share the edge's load evenly, at the cost of one more copy of the channel's
/// speakers from the core per worker. An unready or full worker refuses by itself.
fn choose(loads: &[WorkerLoad], cascade: bool) -> usize {
    let serving =
        || loads.iter().enumerate().filter(|(_, l)| l.channel_members > 0).max_by_key(|(_, l)| l.channel_members);
    let least = || loads.iter().enumerate().filter(|(_, l)| l.channel_room).min_by_key(|(_, l)| (!l.ready, l.sessions));
    let chosen = if cascade { least() } else { serving().or_else(least) };
    chosen.map_or(0, |(k, _)| k)
}

/// Each worker's share of an edge-wide limit (at least 1).
pub fn share(limit: usize, workers: usize) -> usize {
    limit.div_ceil(workers.max(1)).max(1)
}

/// The edge id a worker tells the core: the edge's own for one worker, else
/// `{edge_id}:w{k}` (the core drains all of an edge's workers by the edge's id).
pub fn worker_edge_id(edge_id: &str, worker: usize, workers: usize) -> String {
    if workers == 1 {
        edge_id.to_owned()
    } else {
        format!("{edge_id}:w{worker}")
    }
}

/// The signalling URL a worker tells the core: sessions the core places there arrive
/// on `{url}/w/{k}/...`.
pub fn worker_url(url: &str, worker: usize, workers: usize) -> String {
    let url = url.trim_end_matches('/');
    if workers == 1 {
        url.to_owned()
    } else {
        format!("{url}/w/{worker}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(channel_members: usize, sessions: usize, ready: bool) -> WorkerLoad {
        WorkerLoad { channel_members, channel_room: true, sessions, ready }
    }

    fn full(l: WorkerLoad) -> WorkerLoad {
        WorkerLoad { channel_room: false, ..l }
    }

    #[test]
    fn standalone_a_channel_stays_on_its_worker_and_new_channels_go_to_the_least_loaded() {
        assert_eq!(choose(&[load(0, 10, true), load(3, 50, true)], false), 1, "the channel's worker, though fuller");
        assert_eq!(choose(&[load(1, 10, true), load(3, 50, true)], false), 1, "the one with most of the channel");
        assert_eq!(choose(&[load(0, 10, true), full(load(25, 50, true))], false), 1, "it refuses by itself");
        assert_eq!(choose(&[load(0, 10, true), load(0, 5, true)], false), 1);
        assert_eq!(choose(&[load(0, 10, true), load(0, 5, false)], false), 0, "a ready worker first");
        assert_eq!(choose(&[load(0, 7, true)], false), 0);
    }

    #[test]
    fn in_cascade_sessions_go_to_the_least_loaded_worker_with_room() {
        assert_eq!(choose(&[load(0, 10, true), load(3, 50, true)], true), 0);
        assert_eq!(choose(&[load(5, 10, true), load(0, 5, true)], true), 1);
        assert_eq!(choose(&[full(load(5, 10, true)), load(9, 50, true)], true), 1, "room in the channel");
        assert_eq!(choose(&[load(0, 10, true), load(0, 5, false)], true), 0, "a ready worker first");
    }

    #[test]
    fn limits_split_over_workers_and_worker_names() {
        assert_eq!(share(5000, 2), 2500);
        assert_eq!(share(5, 2), 3);
        assert_eq!(share(1, 4), 1);
        assert_eq!(worker_edge_id("edge-a", 0, 1), "edge-a");
        assert_eq!(worker_edge_id("edge-a", 1, 2), "edge-a:w1");
        assert_eq!(worker_url("http://e:8080/", 0, 1), "http://e:8080");
        assert_eq!(worker_url("http://e:8080/", 1, 2), "http://e:8080/w/1");
    }
}
