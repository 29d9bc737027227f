//! Channel leases in Redis, shared by every core of a fleet.
//!
//! A lease is one key per channel holding `token|relay_addr|http_url|epoch`, with an
//! expiry; a second key per channel holds the last epoch handed out. Every change is a
//! Lua script, so it is atomic in Redis:
//! - acquire: if nobody holds the lease, a new epoch (higher than the last, and at least
//!   Redis' clock in µs, so epochs keep rising even if Redis lost its data) and the
//!   lease with its expiry; else who holds it. A holder asking again extends it.
//! - renew: extends the leases whose value carries this core's token; a lease that
//!   vanished (Redis restarted) is taken again at a new epoch; one held by another core
//!   is reported lost. Release deletes only with the token.
//!
//! Keys share one hash tag, so a renewal of many channels is one script on Redis Cluster
//! too. Every call has a timeout; the connection is made lazily and remade by the
//! connection manager, so a core starts and runs while Redis is down.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

/// How long one Redis round trip (or connection attempt) may take.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one store operation may take in all, waiting for a connection included:
/// during an outage, calls fail in this time rather than queue behind each other.
pub const OPERATION_TIMEOUT: Duration = Duration::from_millis(800);

async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, f).await.map_err(|_| StoreError::Timeout)?
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer in time")]
    Timeout,
    #[error("unexpected lease value in redis")]
    BadValue,
}

/// Who holds a channel, as the store says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Us { epoch: u64 },
    Other { relay_addr: String, http_url: String },
}

const ACQUIRE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return cur
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local e = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
if e < now_us then e = now_us end
local es = string.format('%.0f', e)
redis.call('SET', KEYS[2], es)
local val = ARGV[1] .. '|' .. ARGV[2] .. '|' .. es
redis.call('SET', KEYS[1], val, 'PX', ARGV[3])
return val
"#;

const RENEW: &str = r#"
local out = {}
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS, 2 do
  local cur = redis.call('GET', KEYS[i])
  if cur then
    if string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
      redis.call('PEXPIRE', KEYS[i], ARGV[3])
      table.insert(out, string.match(cur, '|(%d+)$') or '0')
    else
      table.insert(out, '0')
    end
  else
    local e = tonumber(redis.call('GET', KEYS[i + 1]) or '0') + 1
    if e < now_us then e = now_us end
    local es = string.format('%.0f', e)
    redis.call('SET', KEYS[i + 1], es)
    redis.call('SET', KEYS[i], ARGV[1] .. '|' .. ARGV[2] .. '|' .. es, 'PX', ARGV[3])
    table.insert(out, es)
  end
end
return out
"#;

const RELEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

pub struct LeaseStore {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    prefix: String,
    /// This process's owner token: only it renews or releases this core's leases.
    token: String,
    /// `relay_addr|http_url`: what other cores send edges and clients to.
    owner: String,
    ttl_ms: u64,
    acquire: redis::Script,
    renew: redis::Script,
    release: redis::Script,
}

impl LeaseStore {
    /// `relay_addr` and `http_url` are where edges and clients reach this core.
    pub fn new(url: &str, prefix: &str, relay_addr: &str, http_url: &str, ttl: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !relay_addr.contains('|') && !http_url.contains('|'),
            "the relay address and public URL of a core may not contain '|'"
        );
        anyhow::ensure!(
            !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
            "the Redis key prefix must be 1 or more of A-Z a-z 0-9 - _ . :"
        );
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("bad Redis URL: {e}"))?;
        Ok(LeaseStore {
            client,
            conn: Mutex::new(None),
            prefix: prefix.to_owned(),
            token: format!("{:032x}", rand::random::<u128>()),
            owner: format!("{relay_addr}|{http_url}"),
            ttl_ms: ttl.as_millis().max(1) as u64,
            acquire: redis::Script::new(ACQUIRE),
            renew: redis::Script::new(RENEW),
            release: redis::Script::new(RELEASE),
        })
    }

    fn lease_key(&self, channel: &str) -> String {
        format!("{{{}}}:lease:{channel}", self.prefix)
    }

    fn epoch_key(&self, channel: &str) -> String {
        format!("{{{}}}:epoch:{channel}", self.prefix)
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(STORE_TIMEOUT))
            .set_response_timeout(Some(STORE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let made = tokio::time::timeout(STORE_TIMEOUT, self.client.get_connection_manager_with_config(config))
            .await
            .map_err(|_| StoreError::Timeout)??;
        *conn = Some(made.clone());
        Ok(made)
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        Ok(tokio::time::timeout(STORE_TIMEOUT, f).await.map_err(|_| StoreError::Timeout)??)
    }

    /// Takes the channel's lease if it is free, or says who holds it.
    pub async fn acquire(&self, channel: &str) -> Result<Holder, StoreError> {
        within(OPERATION_TIMEOUT, self.acquire_now(channel)).await
    }

    async fn acquire_now(&self, channel: &str) -> Result<Holder, StoreError> {
        let mut conn = self.connection().await?;
        let mut call = self.acquire.key(self.lease_key(channel));
        call.key(self.epoch_key(channel)).arg(&self.token).arg(&self.owner).arg(self.ttl_ms);
        let value: String = self.timed(call.invoke_async(&mut conn)).await?;
        self.parse(&value)
    }

    fn parse(&self, value: &str) -> Result<Holder, StoreError> {
        let mut parts = value.splitn(4, '|');
        let (Some(token), Some(relay_addr), Some(http_url), Some(epoch)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(StoreError::BadValue);
        };
        if token == self.token {
            return Ok(Holder::Us { epoch: epoch.parse().map_err(|_| StoreError::BadValue)? });
        }
        Ok(Holder::Other { relay_addr: relay_addr.to_owned(), http_url: http_url.to_owned() })
    }

    /// Extends this core's leases; per channel the epoch it holds now, or `None` where
    /// another core holds it. With no channels, a round trip that tells whether the store
    /// answers.
    pub async fn renew(&self, channels: &[Arc<str>]) -> Result<Vec<Option<u64>>, StoreError> {
        within(OPERATION_TIMEOUT, self.renew_now(channels)).await
    }

    async fn renew_now(&self, channels: &[Arc<str>]) -> Result<Vec<Option<u64>>, StoreError> {
        let mut conn = self.connection().await?;
        if channels.is_empty() {
            let _: String = self.timed(redis::cmd("PING").query_async(&mut conn)).await?;
            return Ok(Vec::new());
        }
        let mut call = self.renew.prepare_invoke();
        for c in channels {
            call.key(self.lease_key(c)).key(self.epoch_key(c));
        }
        call.arg(&self.token).arg(&self.owner).arg(self.ttl_ms);
        let epochs: Vec<String> = self.timed(call.invoke_async(&mut conn)).await?;
        if epochs.len() != channels.len() {
            return Err(StoreError::BadValue);
        }
        Ok(epochs.iter().map(|e| e.parse::<u64>().ok().filter(|&e| e > 0)).collect())
    }

    /// Gives up a lease this core holds (a channel with nobody left, or shutdown).
    pub async fn release(&self, channel: &str) -> Result<(), StoreError> {
        within(OPERATION_TIMEOUT, self.release_now(channel)).await
    }

    async fn release_now(&self, channel: &str) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let mut call = self.release.key(self.lease_key(channel));
        call.arg(&self.token);
        let _: i64 = self.timed(call.invoke_async(&mut conn)).await?;
        Ok(())
    }
}
