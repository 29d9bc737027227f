//! The lease scripts against a real Redis (Debian's `redis-server`, started here on a
//! loopback port): ownership by token, epochs that only rise, even across data loss.

use std::sync::Arc;
use std::time::Duration;

use core_sfu::lease_store::{Holder, LeaseStore};

struct Redis(std::process::Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn redis() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server runs (scripts/setup-test-deps.sh installs it)");
    let redis = Redis(child, port);
    let up = async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), up).await.expect("redis-server listens");
    redis
}

fn store(redis: &Redis, name: &str) -> LeaseStore {
    let url = format!("redis://127.0.0.1:{}", redis.1);
    LeaseStore::new(&url, "test", &format!("{name}:4433"), &format!("http://{name}"), Duration::from_secs(3)).unwrap()
}

#[tokio::test]
async fn leases_belong_to_their_token_and_epochs_only_rise() {
    let redis = redis().await;
    let (a, b) = (store(&redis, "core-a"), store(&redis, "core-b"));
    let Holder::Us { epoch: first } = a.acquire("lobby").await.unwrap() else { panic!("free lease") };
    assert_eq!(a.acquire("lobby").await.unwrap(), Holder::Us { epoch: first }, "the holder asking again keeps it");
    assert_eq!(
        b.acquire("lobby").await.unwrap(),
        Holder::Other { relay_addr: "core-a:4433".into(), http_url: "http://core-a".into() }
    );
    let lobby: Arc<str> = "lobby".into();
    assert_eq!(b.renew(std::slice::from_ref(&lobby)).await.unwrap(), vec![None], "only the holder renews");
    assert_eq!(a.renew(std::slice::from_ref(&lobby)).await.unwrap(), vec![Some(first)]);
    b.release("lobby").await.unwrap();
    assert!(matches!(b.acquire("lobby").await.unwrap(), Holder::Other { .. }), "only the holder releases");
    a.release("lobby").await.unwrap();
    let Holder::Us { epoch: second } = b.acquire("lobby").await.unwrap() else { panic!("released lease") };
    assert!(second > first, "{first} then {second}");
    // Redis loses its data: the holder's renewal takes the lease again, higher still.
    let url = format!("redis://127.0.0.1:{}", redis.1);
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let [Some(third)] = b.renew(std::slice::from_ref(&lobby)).await.unwrap()[..] else { panic!("taken again") };
    assert!(third > second, "{second} then {third}");
    assert!(third >= first.max(1_700_000_000_000_000), "epochs start at Redis' clock in µs: {third}");
    // With nothing to renew, a renewal is a round trip that says whether Redis answers.
    assert_eq!(a.renew(&[]).await.unwrap(), Vec::<Option<u64>>::new());
    drop(redis);
    assert!(a.renew(&[]).await.is_err(), "an unreachable store is an error, quickly");
}

#[tokio::test]
async fn a_lease_expires_when_its_holder_stops_renewing() {
    let redis = redis().await;
    let url = format!("redis://127.0.0.1:{}", redis.1);
    let a = LeaseStore::new(&url, "test", "core-a:4433", "http://core-a", Duration::from_millis(300)).unwrap();
    let b = store(&redis, "core-b");
    assert!(matches!(a.acquire("lobby").await.unwrap(), Holder::Us { .. }));
    assert!(matches!(b.acquire("lobby").await.unwrap(), Holder::Other { .. }));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(b.acquire("lobby").await.unwrap(), Holder::Us { .. }), "expired, so free");
}
