//! Janus's HTTP API, as far as the load tester needs it to drive the VideoRoom plugin
//! with the same clients it runs against our edge: a session and a plugin handle per
//! client, an audio-only room, publishers that `joinandconfigure` with their offer, and
//! subscribers that `join` the room's publishers and answer Janus's offer with `start`.
//! Asynchronous answers come by long poll on the session; the session is kept alive with
//! keepalives (a long poll per client would hold thousands of connections open).

use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

/// Where Debian's `janus` package puts its plugins, transports, events and loggers.
pub const DEBIAN_LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";

/// Writes a minimal Janus configuration into `dir` (only the HTTP transport, on
/// 127.0.0.1:`http_port`, and the VideoRoom plugin; `event_loops` shared loops instead of a
/// thread per handle when given) and returns the path of its `janus.jcfg`, for
/// `janus -C <that path> -F <dir>`.
pub fn write_config(
    dir: &std::path::Path,
    http_port: u16,
    event_loops: Option<u32>,
) -> std::io::Result<std::path::PathBuf> {
    const OTHER_PLUGINS: [&str; 11] = [
        "audiobridge",
        "duktape",
        "echotest",
        "lua",
        "nosip",
        "recordplay",
        "sip",
        "streaming",
        "textroom",
        "videocall",
        "voicemail",
    ];
    const OTHER_TRANSPORTS: [&str; 5] = ["mqtt", "nanomsg", "pfunix", "rabbitmq", "websockets"];
    let plugins = OTHER_PLUGINS.map(|p| format!("libjanus_{p}.so")).join(",");
    let transports = OTHER_TRANSPORTS.map(|t| format!("libjanus_{t}.so")).join(",");
    let loops = event_loops.map_or(String::new(), |n| format!(" event_loops = {n}\n"));
    let lib = DEBIAN_LIB;
    let main = format!(
        "general: {{\n configs_folder = \"{dir}\"\n plugins_folder = \"{lib}/plugins\"\n \
         transports_folder = \"{lib}/transports\"\n events_folder = \"{lib}/events\"\n \
         loggers_folder = \"{lib}/loggers\"\n debug_level = 3\n{loops}}}\n\
         media: {{\n rtp_port_range = \"20000-60000\"\n}}\n\
         plugins: {{\n disable = \"{plugins}\"\n}}\n\
         transports: {{\n disable = \"{transports}\"\n}}\n\
         loggers: {{\n disable = \"libjanus_jsonlog.so\"\n}}\n",
        dir = dir.display()
    );
    let http = format!(
        "general: {{\n base_path = \"/janus\"\n http = true\n port = {http_port}\n ip = \"127.0.0.1\"\n}}\n\
         admin: {{\n admin_http = false\n}}\n"
    );
    let path = dir.join("janus.jcfg");
    std::fs::write(&path, main)?;
    std::fs::write(dir.join("janus.transport.http.jcfg"), http)?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    Ok(path)
}

/// How long a request, or the wait for an asynchronous answer, may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Janus ends a session idle for 60 s by default.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

fn transaction() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A Janus session with one VideoRoom handle.
pub struct Session {
    http: reqwest::Client,
    /// `{base}/janus/{session}`.
    session_url: String,
    handle: u64,
}

/// Janus's reply, with its error turned into one.
fn checked(reply: Value) -> anyhow::Result<Value> {
    if reply["janus"] == "error" {
        anyhow::bail!("janus error {}: {}", reply["error"]["code"], reply["error"]["reason"]);
    }
    if let Some(code) = reply["plugindata"]["data"]["error_code"].as_u64() {
        anyhow::bail!("videoroom error {code}: {}", reply["plugindata"]["data"]["error"]);
    }
    Ok(reply)
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> anyhow::Result<Value> {
    let reply: Value = http
        .post(url)
        .timeout(ANSWER_TIMEOUT)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?
        .json()
        .await
        .with_context(|| format!("reading Janus's answer from {url}"))?;
    checked(reply)
}

impl Session {
    /// Creates a session on the Janus at `base` (`http://host:port`) and attaches the
    /// VideoRoom plugin.
    pub async fn open(http: reqwest::Client, base: &str) -> anyhow::Result<Session> {
        let root = format!("{}/janus", base.trim_end_matches('/'));
        let created = post(&http, &root, json!({"janus": "create", "transaction": transaction()})).await?;
        let id = created["data"]["id"].as_u64().context("Janus gave no session id")?;
        let session_url = format!("{root}/{id}");
        let attach = json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": transaction()});
        let attached = post(&http, &session_url, attach).await?;
        let handle = attached["data"]["id"].as_u64().context("Janus gave no handle id")?;
        Ok(Session { http, session_url, handle })
    }

    fn handle_url(&self) -> String {
        format!("{}/{}", self.session_url, self.handle)
    }

    /// A request Janus answers at once (`create`, `listparticipants`): its plugin data.
    pub async fn request(&self, body: Value) -> anyhow::Result<Value> {
        let reply = post(
            &self.http,
            &self.handle_url(),
            json!({"janus": "message", "transaction": transaction(), "body": body}),
        )
        .await?;
        Ok(reply["plugindata"]["data"].clone())
    }

    /// A request Janus acknowledges and answers later by event (`joinandconfigure`,
    /// `join`, `start`): the event (plugin data and any JSEP).
    pub async fn call(&self, body: Value, jsep: Option<Value>) -> anyhow::Result<Value> {
        let t = transaction();
        let mut message = json!({"janus": "message", "transaction": t, "body": body});
        if let Some(jsep) = jsep {
            message["jsep"] = jsep;
        }
        let reply = post(&self.http, &self.handle_url(), message).await?;
        if reply["janus"] == "event" {
            return checked(reply);
        }
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "Janus did not answer {t} in time");
            let polled: Value = self
                .http
                .get(format!("{}?maxev=10", self.session_url))
                .timeout(ANSWER_TIMEOUT)
                .send()
                .await
                .context("long poll")?
                .json()
                .await
                .context("reading a long poll")?;
            let events = match polled {
                Value::Array(events) => events,
                one => vec![one],
            };
            for e in events {
                if e["transaction"] == t.as_str() && e["janus"] == "event" {
                    return checked(e);
                }
            }
        }
    }

    /// Gives Janus our host candidate for the first media section.
    pub async fn trickle(&self, addr: std::net::SocketAddr) -> anyhow::Result<()> {
        let candidate = format!("candidate:1 1 udp 2130706431 {} {} typ host", addr.ip(), addr.port());
        let body = json!({"janus": "trickle", "transaction": transaction(),
                          "candidate": {"candidate": candidate, "sdpMLineIndex": 0, "sdpMid": "0"}});
        post(&self.http, &self.handle_url(), body).await.map(drop)
    }

    /// Tells Janus our candidates are complete.
    pub async fn end_of_candidates(&self) -> anyhow::Result<()> {
        let body = json!({"janus": "trickle", "transaction": transaction(), "candidate": {"completed": true}});
        post(&self.http, &self.handle_url(), body).await.map(drop)
    }

    pub async fn keepalive(&self) -> anyhow::Result<()> {
        post(&self.http, &self.session_url, json!({"janus": "keepalive", "transaction": transaction()})).await.map(drop)
    }

    pub async fn destroy(&self) {
        let _ = post(&self.http, &self.session_url, json!({"janus": "destroy", "transaction": transaction()})).await;
    }

    /// The room's publishers' ids, in the order Janus lists them.
    pub async fn publishers(&self, room: u64) -> anyhow::Result<Vec<u64>> {
        let data = self.request(json!({"request": "listparticipants", "room": room})).await?;
        let list = data["participants"].as_array().context("no participants list")?;
        Ok(list.iter().filter(|p| p["publisher"] == true).filter_map(|p| p["id"].as_u64()).collect())
    }
}

/// Creates the audio-only room `room` (or finds it there).
pub async fn create_room(http: &reqwest::Client, base: &str, room: u64, publishers: usize) -> anyhow::Result<()> {
    let session = Session::open(http.clone(), base).await?;
    let exists = session.request(json!({"request": "exists", "room": room})).await?;
    if exists["exists"] != true {
        session
            .request(json!({
                "request": "create",
                "room": room,
                "description": "sfu benchmark",
                "publishers": publishers.max(1),
                "audiocodec": "opus",
                "audiolevel_ext": true,
                "audiolevel_event": false,
                "notify_joining": false,
            }))
            .await?;
    }
    session.destroy().await;
    Ok(())
}

/// A host candidate line for our socket.
pub fn host_candidate(addr: std::net::SocketAddr) -> String {
    format!("a=candidate:1 1 udp 2130706431 {} {} typ host\r\n", addr.ip(), addr.port())
}

/// `sdp` with `candidate` in every open media section (after its `a=rtcp-mux`).
pub fn with_candidate(sdp: &str, candidate: &str) -> String {
    sdp.replace("a=rtcp-mux\r\n", &format!("a=rtcp-mux\r\n{candidate}"))
}

/// The SDP in a JSEP object.
pub fn sdp_of(event: &Value) -> anyhow::Result<String> {
    event["jsep"]["sdp"].as_str().map(str::to_owned).context("Janus sent no SDP")
}

/// Whether the answer makes us the DTLS client (Janus said `setup:passive`).
pub fn we_are_dtls_client(answer_sdp: &str) -> bool {
    !answer_sdp.lines().any(|l| l.trim() == "a=setup:active")
}

/// Our answer to Janus's subscriber offer: receive every audio section it offers, Opus
/// only, bundled, as the DTLS client (`setup:active`).
pub fn answer_offer(offer: &str, ice_ufrag: &str, ice_pwd: &str, fingerprint: &[u8; 32]) -> anyhow::Result<String> {
    struct Section {
        mid: String,
        opus: Option<u8>,
        level_ext: Option<String>,
        open: bool,
    }
    let mut sections: Vec<Section> = Vec::new();
    for line in offer.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            let port = m.split_whitespace().nth(1).unwrap_or("0");
            sections.push(Section {
                mid: String::new(),
                opus: None,
                level_ext: None,
                open: m.starts_with("audio") && port != "0",
            });
        } else if let Some(s) = sections.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                s.mid = mid.to_owned();
            } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
                if let Some((pt, codec)) = map.split_once(' ') {
                    if codec.to_ascii_lowercase().starts_with("opus/48000") && s.opus.is_none() {
                        s.opus = pt.parse().ok();
                    }
                }
            } else if let Some(ext) = line.strip_prefix("a=extmap:") {
                if ext.contains("ssrc-audio-level") {
                    s.level_ext = Some(ext.to_owned());
                }
            }
        }
    }
    anyhow::ensure!(sections.iter().any(|s| s.open && s.opus.is_some()), "Janus offered no Opus audio");
    let bundle: Vec<&str> = sections.iter().filter(|s| s.open && s.opus.is_some()).map(|s| s.mid.as_str()).collect();
    let fp = media::sdp_offer::format_fingerprint(fingerprint);
    let mut out = format!(
        "v=0\r\no=- {} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE {}\r\n",
        rand::random::<u64>() >> 1,
        bundle.join(" ")
    );
    for s in &sections {
        match (s.open, s.opus) {
            (true, Some(pt)) => {
                out += &format!(
                    "m=audio 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{}\r\na=ice-ufrag:{ice_ufrag}\r\n\
                     a=ice-pwd:{ice_pwd}\r\na=fingerprint:sha-256 {fp}\r\na=setup:active\r\na=rtcp-mux\r\na=recvonly\r\n\
                     a=rtpmap:{pt} opus/48000/2\r\n",
                    s.mid
                );
                if let Some(ext) = &s.level_ext {
                    out += &format!("a=extmap:{ext}\r\n");
                }
            }
            _ => {
                out +=
                    &format!("m=audio 0 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:{}\r\na=inactive\r\n", s.mid)
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=VideoRoom 1\r\nt=0 0\r\na=group:BUNDLE a0 a1\r\na=ice-lite\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=sendonly\r\na=mid:a0\r\na=rtcp-mux\r\n\
        a=ice-ufrag:jj\r\na=ice-pwd:janusjanusjanusjanusjanu\r\na=setup:actpass\r\na=rtpmap:111 opus/48000/2\r\n\
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=ssrc:123 cname:janus\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=sendonly\r\na=mid:a1\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:v\r\n";

    #[test]
    fn janus_offers_are_answered_receiving_every_audio_section() {
        let answer = answer_offer(OFFER, "uf", "pwpwpwpwpwpwpwpwpwpwpwpw", &[1; 32]).unwrap();
        assert!(answer.contains("a=group:BUNDLE a0 a1\r\n"), "{answer}");
        assert_eq!(answer.matches("a=recvonly").count(), 2);
        assert_eq!(answer.matches("a=setup:active").count(), 2);
        assert!(answer.contains("a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
        assert!(answer.contains("m=audio 0 ") && answer.contains("a=mid:v"), "the video section is refused");
        assert!(we_are_dtls_client("a=setup:passive\r\n"));
        assert!(!we_are_dtls_client("v=0\r\na=setup:active\r\n"));
    }

    #[test]
    fn errors_from_janus_and_the_plugin_are_errors() {
        assert!(checked(json!({"janus": "error", "error": {"code": 458, "reason": "No such session"}})).is_err());
        let plugin = json!({"janus": "success", "plugindata": {"data": {"error_code": 426, "error": "No such room"}}});
        assert!(checked(plugin).is_err());
        assert!(checked(json!({"janus": "success", "data": {"id": 1}})).is_ok());
    }
}
