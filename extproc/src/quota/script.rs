//! Redis: the bucket script (`bucket.lua`), called with EVALSHA (the `redis` crate loads it
//! again when Redis answers NOSCRIPT, e.g. after a restart), over a connection manager that
//! reconnects by itself. Every call is bounded by `timeout`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::limits::{Bucket, Move, Take};

pub const SOURCE: &str = include_str!("bucket.lua");

/// Why a Redis call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// No answer in time, or no connection: the caller answers UNAVAILABLE.
    Unavailable(String),
    /// Redis answered, but not what the script returns (a bug or a foreign key type).
    Reply(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(why) => write!(f, "redis unavailable: {why}"),
            StoreError::Reply(why) => write!(f, "redis reply: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Grant of one take item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub granted: i64,
    pub level: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeOutcome {
    /// 0 when granted.
    pub retry_after_ms: u64,
    pub grants: Vec<Granted>,
}

/// The buckets in Redis.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    script: Arc<Script>,
    timeout: Duration,
    up: Arc<AtomicBool>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Whether a failure means "Redis is not there" (rather than a bad reply).
fn unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::ReadOnly
            )
        )
}

impl Store {
    /// Connects lazily: the service starts while Redis is down and serves once it is up.
    pub fn new(url: &str, timeout: Duration) -> Result<Store, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url:?}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("--redis {url:?}: {e}"))?;
        Ok(Store {
            conn,
            script: Arc::new(Script::new(SOURCE)),
            timeout,
            up: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Whether the last Redis call got an answer.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if unreachable(&e) => Err(StoreError::Unavailable(e.to_string())),
            Ok(Err(e)) => Err(StoreError::Reply(e.to_string())),
        };
        self.up.store(
            !matches!(result, Err(StoreError::Unavailable(_))),
            Ordering::Relaxed,
        );
        result
    }

    async fn run(
        &self,
        op: &str,
        keys: &[&Bucket],
        args: Vec<u64>,
    ) -> Result<Vec<i64>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for b in keys {
            invocation.key(b.key());
        }
        invocation.arg(op);
        for a in args {
            invocation.arg(a);
        }
        let mut conn = self.conn.clone();
        self.bounded(invocation.invoke_async::<Vec<i64>>(&mut conn))
            .await
    }

    /// Refill, then all or nothing on `min`; see `bucket.lua`.
    pub async fn take(&self, items: &[Take]) -> Result<TakeOutcome, StoreError> {
        let keys: Vec<&Bucket> = items.iter().map(|t| &t.bucket).collect();
        let args = items
            .iter()
            .flat_map(|t| [t.bucket.per_minute, t.bucket.capacity, t.want, t.min])
            .collect();
        let out = self.run("take", &keys, args).await?;
        if out.len() != 2 + 2 * items.len() {
            return Err(StoreError::Reply(format!("take: {} values", out.len())));
        }
        let grants = out[2..]
            .chunks(2)
            .map(|g| Granted {
                granted: g[0],
                level: g[1],
            })
            .collect();
        Ok(TakeOutcome {
            retry_after_ms: if out[0] == 1 {
                0
            } else {
                out[1].max(1).unsigned_abs()
            },
            grants,
        })
    }

    /// Credits (capped at capacity); returns the whole levels.
    pub async fn give(&self, items: &[Move]) -> Result<Vec<i64>, StoreError> {
        self.moves("give", items).await
    }

    /// Debits (down to -4 x capacity); returns the whole levels.
    pub async fn charge(&self, items: &[Move]) -> Result<Vec<i64>, StoreError> {
        self.moves("charge", items).await
    }

    async fn moves(&self, op: &str, items: &[Move]) -> Result<Vec<i64>, StoreError> {
        let keys: Vec<&Bucket> = items.iter().map(|m| &m.bucket).collect();
        let args = items
            .iter()
            .flat_map(|m| [m.bucket.per_minute, m.bucket.capacity, m.amount])
            .collect();
        let out = self.run(op, &keys, args).await?;
        if out.len() != items.len() {
            return Err(StoreError::Reply(format!("{op}: {} values", out.len())));
        }
        Ok(out)
    }

    /// PING: keeps `is_up` current while no client calls.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(async move {
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
        })
        .await
    }
}
