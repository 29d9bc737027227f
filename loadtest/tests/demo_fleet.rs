//! The main job's fleet form (`scripts/run-demo.sh --cores 2 --redis` runs `loadtest
//! cluster` so): two cores on a local redis-server and three edges come up, placement
//! through either core reaches an edge, and SIGTERM stops it all, Redis included.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn the_demo_fleet_starts_places_clients_and_stops_cleanly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["cluster", "--cores", "2", "--redis", "--http-port", "0", "--udp-port", "0", "--quic-port", "0"])
        .args(["--core-http-port", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let printed: Vec<String> = lines.by_ref().take_while(|l| !l.starts_with("Operator API")).collect();
    let text = printed.join("\n");
    assert!(text.contains("Local fleet: 2 cores sharing channels through redis://127.0.0.1:"), "{text}");
    let url_after = |prefix: &str| -> Vec<String> {
        printed
            .iter()
            .filter_map(|l| l.trim().strip_prefix(prefix))
            .map(|rest| rest.split_whitespace().nth(1).unwrap().trim_end_matches('/').to_owned())
            .collect()
    };
    let (cores, edges) = (url_after("core"), url_after("edge"));
    assert_eq!((cores.len(), edges.len()), (2, 3), "{text}");
    let redis_port: u16 = text.split("redis://127.0.0.1:").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();

    // A listener asking either core is sent to an edge (the channel's owner places it).
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for core in &cores {
        let r = client.post(format!("{core}/whep/lobby")).send().await.unwrap();
        let status = r.status().as_u16();
        let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default();
        assert_eq!(status, 307, "{core}: {location}");
        assert!(
            edges.iter().any(|e| location.starts_with(&format!("{e}/whep/lobby")))
                || cores.iter().any(|c| location.starts_with(c)),
            "{location}"
        );
    }

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    assert!(std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err(), "redis-server stopped with the fleet");
}
