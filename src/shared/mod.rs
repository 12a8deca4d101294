//! Tag books in Redis or Valkey, shared by every replica: `serve --state redis://…`.
//!
//! Each decision is one server-side script (`decide.lua`) that counts and reserves atomically, so
//! N concurrent pushes spread over any replicas admit exactly min(N, k). Every key of one
//! repository carries the hash tag `{<repository>}` (names cannot contain braces), so a script
//! touches one slot of a Cluster. A reservation is a lease: the registry's answer commits or
//! releases it (`settle.lua`); a lease whose replica died runs out, and its expiry also calls for
//! a new read of the tag list, where the push may have landed. The tag list itself is shared: one
//! replica takes the read (`begin.lua`), the others wait for its result, and commits or deletes
//! seen meanwhile are journalled and replayed onto it (`complete.lua`).
//!
//! The store losing its data is detected two ways: a missing repository record (a restart with
//! an empty dataset) reads as cold; and a changed dataset identity (the `rg:epoch` key, or a
//! standalone server's `run_id` after a failover) makes every record older than the change cold.
//! Cold means "read the registry's tag list", never "trust a local guess".

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Script, Value};
use sha2::{Digest, Sha256};

use crate::policy::{TagFilter, Tally};

/// Where tag books live, from `--state`.
#[derive(Clone, PartialEq, Eq)]
pub enum StateUrl {
    /// In this process: exact for one replica only.
    Memory,
    /// A standalone Redis or Valkey (`redis://`, or `rediss://` with TLS).
    Single(String),
    /// A Redis or Valkey Cluster: seed nodes as `redis://host:port` URLs.
    Cluster(Vec<String>),
}

impl fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Single(url) => write!(f, "{}", redact(url)),
            Self::Cluster(nodes) => {
                let nodes: Vec<String> = nodes.iter().map(|n| redact(n)).collect();
                write!(f, "cluster {}", nodes.join(","))
            }
        }
    }
}

/// A URL with any password replaced, for logs and errors.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("<redacted>"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

/// Why `--state` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "--state {0:?} is not understood; use memory, redis://[user:password@]host:port[/db], rediss://… or redis-cluster://host:port[,host:port…]"
    )]
    Url(String),
    #[error("cannot read the state store's credentials from {path}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the state store {url}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

impl StateUrl {
    /// Parses `--state`. Credentials given as files (a mounted Secret) go into every node URL.
    pub fn parse(
        text: &str,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Self, StateError> {
        let text = text.trim();
        if text == "memory" {
            return Ok(Self::Memory);
        }
        let with_credentials = |url: &str| -> Result<String, StateError> {
            let mut parsed = reqwest::Url::parse(url).map_err(|_| StateError::Url(redact(text)))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(StateError::Url(redact(text)));
            }
            if let Some(user) = username {
                parsed
                    .set_username(user)
                    .map_err(|_| StateError::Url(redact(text)))?;
            }
            if let Some(password) = password {
                parsed
                    .set_password(Some(password))
                    .map_err(|_| StateError::Url(redact(text)))?;
            }
            Ok(parsed.to_string())
        };
        if let Some(nodes) = text.strip_prefix("redis-cluster://") {
            let (userinfo, hosts) = match nodes.rsplit_once('@') {
                Some((user, hosts)) => (format!("{user}@"), hosts),
                None => (String::new(), nodes),
            };
            let nodes: Vec<String> = hosts
                .trim_end_matches('/')
                .split(',')
                .filter(|h| !h.trim().is_empty())
                .map(|h| with_credentials(&format!("redis://{userinfo}{}", h.trim())))
                .collect::<Result<_, _>>()?;
            if nodes.is_empty() {
                return Err(StateError::Url(redact(text)));
            }
            return Ok(Self::Cluster(nodes));
        }
        if text.starts_with("redis://") || text.starts_with("rediss://") {
            return Ok(Self::Single(with_credentials(text)?));
        }
        Err(StateError::Url(redact(text)))
    }
}

/// A connection that reconnects by itself, to one server or a Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Why the store could not answer a decision. The cause is kept as text on purpose: one error
/// is cloned to every decision waiting on the same call, and `redis::RedisError` is not `Clone`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the shared state store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the shared state store failed: {0}")]
    Failed(String),
}

/// What the shared store decided; `Cold` asks for a tag-list read first, naming how many
/// reads the store had installed (for [`SharedBooks::begin_read`]); `Later` answers
/// [`Take::Rewrites`] when a tag the push names is not confirmed.
#[derive(Debug, PartialEq, Eq)]
pub enum Decided {
    Cold(String),
    Later,
    Tally { allowed: bool, tally: Tally },
}

/// One of a repository's keys; each script names the ones it reads, in the order of its `KEYS`.
#[derive(Clone, Copy, Debug)]
enum Key {
    Confirmed,
    Meta,
    Reservations,
    Doubts,
    Rereads,
    Journal,
    Lock,
    Rewrites,
}

/// The keys of one repository under one exclusion list, indexed by [`Key`].
#[derive(Clone, Debug)]
pub struct RepoKeys([String; 8]);

impl RepoKeys {
    /// `filter` selects which tags count; each list keeps its own confirmed set and record.
    pub fn new(repository: &str, filter: &TagFilter) -> Self {
        let mut hash = Sha256::new();
        for pattern in filter.patterns() {
            hash.update(pattern.as_bytes());
            hash.update([0]);
        }
        let f: String = hash.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let base = format!("rg:{{{repository}}}");
        // In the order of `Key`.
        Self([
            format!("{base}:c:{f}"),
            format!("{base}:m:{f}"),
            format!("{base}:r"),
            format!("{base}:d"),
            format!("{base}:x"),
            format!("{base}:j:{f}"),
            format!("{base}:l:{f}"),
            format!("{base}:w"),
        ])
    }

    /// `script` ready to run, with `keys` as its `KEYS`.
    fn invocation<'s>(&self, script: &'s Script, keys: &[Key]) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        for &key in keys {
            invocation.key(&self.0[key as usize]);
        }
        invocation
    }

    /// `script` ready to run, with every key in the order of `Key` as its `KEYS`.
    fn every_key<'s>(&self, script: &'s Script) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        for key in &self.0 {
            invocation.key(key);
        }
        invocation
    }
}

/// What a decision takes in the store when the push fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Nothing: a question about what a push would get.
    Nothing,
    /// The slots of the tags the push would create, and the guard of the tags it re-writes.
    Slots,
    /// Only the guard of re-written tags, and only when the push creates no tag (else
    /// [`Decided::Later`]): for a decision started before the manifest is judged.
    Rewrites,
}

impl Take {
    fn as_arg(self) -> &'static str {
        match self {
            Self::Nothing => "0",
            Self::Slots => "1",
            Self::Rewrites => "w",
        }
    }
}

/// Settings of the shared store.
#[derive(Clone, Debug)]
pub struct SharedOptions {
    /// How long an unsettled reservation (a push whose replica died) holds its slot.
    pub lease: Duration,
    /// How long one store call may take.
    pub timeout: Duration,
}

/// The shared tag books.
pub struct SharedBooks {
    conn: Conn,
    metrics: Arc<crate::metrics::Metrics>,
    options: SharedOptions,
    /// This replica's name in leases and read locks.
    owner: String,
    leases: AtomicU64,
    epoch: std::sync::Mutex<String>,
    /// Records read before this time (ms) are not trusted: the dataset changed then.
    trusted_since: AtomicU64,
    decide: Script,
    begin: Script,
    complete: Script,
    abandon: Script,
    settle: Script,
}

impl fmt::Debug for SharedBooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBooks")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Without `TCP_NODELAY` (redis-rs leaves it off) a script call may wait on Nagle's algorithm
/// behind the previous one's unacknowledged bytes.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// Doubts wait this long for the registry (see `check::DOUBT_GRACE`).
const GRACE_MS: u64 = 2_000;

impl SharedBooks {
    /// Connects; `None` for memory.
    pub async fn connect(
        url: &StateUrl,
        options: SharedOptions,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Option<Arc<Self>>, StateError> {
        let connect_error = |url: String| move |source| StateError::Connect { url, source };
        let conn = match url {
            StateUrl::Memory => return Ok(None),
            StateUrl::Single(u) => {
                let info = redis::IntoConnectionInfo::into_connection_info(u.as_str())
                    .map_err(connect_error(redact(u)))?
                    .set_tcp_settings(tcp_settings());
                let client = redis::Client::open(info).map_err(connect_error(redact(u)))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(options.timeout))
                    .set_response_timeout(Some(options.timeout));
                let manager = ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(connect_error(redact(u)))?;
                Conn::Single(manager)
            }
            StateUrl::Cluster(nodes) => {
                let shown = format!("{url:?}");
                let client = ClusterClient::builder(nodes.clone())
                    .tcp_settings(tcp_settings())
                    .connection_timeout(options.timeout)
                    .response_timeout(options.timeout)
                    .build()
                    .map_err(connect_error(shown.clone()))?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(connect_error(shown))?;
                Conn::Cluster(conn)
            }
        };
        let owner = format!("{:016x}", rand_u64());
        let books = Arc::new(Self {
            conn,
            metrics,
            options,
            owner,
            leases: AtomicU64::new(0),
            epoch: std::sync::Mutex::new(String::new()),
            trusted_since: AtomicU64::new(0),
            decide: Script::new(include_str!("decide.lua")),
            begin: Script::new(include_str!("begin.lua")),
            complete: Script::new(include_str!("complete.lua")),
            abandon: Script::new(include_str!("abandon.lua")),
            settle: Script::new(include_str!("settle.lua")),
        });
        books
            .refresh_identity()
            .await
            .map_err(|e| StateError::Connect {
                url: format!("{url:?}"),
                source: redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "first identity check",
                    e.to_string(),
                )),
            })?;
        Ok(Some(books))
    }

    /// Watches the dataset's identity until the process ends.
    pub fn spawn_identity_watch(self: &Arc<Self>) {
        let books = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(books) = books.upgrade() else { return };
                if let Err(error) = books.refresh_identity().await {
                    tracing::debug!(%error, "state store identity check failed");
                }
            }
        });
    }

    /// Reads (or creates) `rg:epoch` and, on one server, its `run_id`. A change distrusts every
    /// record read before it.
    async fn refresh_identity(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let fresh = format!("{:016x}", rand_u64());
        let mut set = redis::cmd("SET");
        set.arg("rg:epoch").arg(&fresh).arg("NX").arg("GET");
        let previous: Option<String> = self.call(&mut conn, &set).await?;
        let mut identity = previous.unwrap_or(fresh);
        if let Conn::Single(_) = &self.conn {
            let mut info = redis::cmd("INFO");
            info.arg("server");
            let text: String = self.call(&mut conn, &info).await?;
            if let Some(run_id) = text.lines().find_map(|l| l.trim().strip_prefix("run_id:")) {
                identity.push(':');
                identity.push_str(run_id.trim());
            }
        }
        let mut epoch = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        if *epoch != identity {
            if !epoch.is_empty() {
                tracing::warn!(
                    "the shared state store's dataset changed (a restart, a flush or a failover); every count is read again from the registry"
                );
                self.trusted_since.store(now_ms(), Ordering::Relaxed);
            }
            *epoch = identity;
        }
        Ok(())
    }

    fn epoch(&self) -> String {
        self.epoch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        conn: &mut Conn,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let timeout = self.options.timeout;
        let value = tokio::time::timeout(timeout, async {
            match conn {
                Conn::Single(c) => c.req_packed_command(cmd).await,
                Conn::Cluster(c) => c.req_packed_command(cmd).await,
            }
        })
        .await
        .map_err(|_| StoreError::Timeout(timeout))?
        .map_err(|e| StoreError::Failed(e.to_string()))?;
        redis::from_redis_value(value).map_err(|e| StoreError::Failed(e.to_string()))
    }

    async fn run(
        &self,
        op: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<Value, StoreError> {
        let timeout = self.options.timeout;
        let mut conn = self.conn.clone();
        let result = tokio::time::timeout(timeout, async {
            match &mut conn {
                Conn::Single(c) => invocation.invoke_async::<Value>(c).await,
                Conn::Cluster(c) => invocation.invoke_async::<Value>(c).await,
            }
        })
        .await
        .map_err(|_| StoreError::Timeout(timeout))
        .and_then(|r| r.map_err(|e| StoreError::Failed(e.to_string())));
        let labels = crate::metrics::StateLabels {
            op,
            result: match &result {
                Ok(_) => "ok",
                Err(StoreError::Timeout(_)) => "timeout",
                Err(StoreError::Failed(_)) => "error",
            },
        };
        self.metrics.state_calls.get_or_create(&labels).inc();
        result
    }

    /// A new lease id, unique across replicas.
    pub fn lease_id(&self) -> String {
        format!(
            "{}.{}",
            self.owner,
            self.leases.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// One decision: count, judge and, when it fits, take what `take` says, atomically.
    #[allow(clippy::too_many_arguments)]
    pub async fn decide(
        &self,
        keys: &RepoKeys,
        tags: &[String],
        limit: u64,
        cache_ttl: Duration,
        hold: Duration,
        lease: &str,
        take: Take,
    ) -> Result<Decided, StoreError> {
        let now = now_ms();
        use Key::*;
        let mut invocation = keys.invocation(
            &self.decide,
            &[Confirmed, Meta, Reservations, Doubts, Rereads, Rewrites],
        );
        invocation
            .arg(now)
            .arg(self.trusted_since.load(Ordering::Relaxed))
            .arg(ms(cache_ttl))
            .arg(GRACE_MS)
            .arg(self.epoch())
            .arg(limit)
            .arg(now + ms(hold))
            .arg(lease)
            .arg(take.as_arg())
            .arg(ms(hold.max(cache_ttl)) * 2)
            .arg(tags);
        let reply = self.run("decide", invocation).await?;
        let items: Vec<Value> = match reply {
            Value::Array(items) => items,
            other => return Err(StoreError::Failed(format!("unexpected reply {other:?}"))),
        };
        let text = |v: &Value| -> String { redis::from_redis_value(v.clone()).unwrap_or_default() };
        let number =
            |v: &Value| -> usize { redis::from_redis_value(v.clone()).unwrap_or_default() };
        match items.first().map(text).as_deref() {
            Some("cold") => Ok(Decided::Cold(items.get(1).map(text).unwrap_or_default())),
            Some("later") => Ok(Decided::Later),
            Some(verdict @ ("allow" | "deny")) if items.len() >= 3 => {
                let count = number(&items[1]);
                let new = number(&items[2]).min(items.len() - 3);
                let new_tags = items[3..3 + new].iter().map(text).collect();
                let reserved = items[3 + new..].iter().map(text).collect();
                Ok(Decided::Tally {
                    allowed: verdict == "allow",
                    tally: Tally {
                        count,
                        new_tags,
                        reserved,
                    },
                })
            }
            _ => Err(StoreError::Failed(format!("unexpected reply {items:?}"))),
        }
    }

    /// Takes the repository's tag-list read: `Read` when this replica must read it, `Wait`
    /// when another replica is reading, `Decide` when a read landed since `reads` was seen.
    pub async fn begin_read(
        &self,
        keys: &RepoKeys,
        lock: Duration,
        reads: &str,
    ) -> Result<Begin, StoreError> {
        use Key::*;
        let mut invocation = keys.invocation(&self.begin, &[Meta, Journal, Lock]);
        invocation.arg(&self.owner).arg(ms(lock).max(1)).arg(reads);
        Ok(match self.run("begin", invocation).await? {
            Value::Int(1) => Begin::Read,
            Value::Int(2) => Begin::Decide,
            _ => Begin::Wait,
        })
    }

    /// Installs a tag list read since `started_ms`; `false` when the read lock was lost.
    pub async fn complete_read(
        &self,
        keys: &RepoKeys,
        started_ms: u64,
        cache_ttl: Duration,
        tags: &[String],
    ) -> Result<bool, StoreError> {
        use Key::*;
        let mut invocation = keys.invocation(
            &self.complete,
            &[Confirmed, Meta, Doubts, Rereads, Journal, Lock],
        );
        invocation
            .arg(&self.owner)
            .arg(now_ms())
            .arg(started_ms)
            .arg(GRACE_MS)
            .arg(self.epoch())
            .arg(ms(cache_ttl) * 2 + 3_600_000)
            .arg(tags);
        let reply = self.run("complete", invocation).await?;
        Ok(matches!(reply, Value::Int(1)))
    }

    /// Gives up this replica's tag-list read after the registry failed it (`abandon.lua`).
    pub async fn abandon_read(&self, keys: &RepoKeys) -> Result<(), StoreError> {
        use Key::*;
        let mut invocation = keys.invocation(&self.abandon, &[Meta, Journal, Lock]);
        invocation.arg(&self.owner);
        self.run("abandon", invocation).await.map(drop)
    }

    /// A settlement or an observation: see `settle.lua`.
    pub async fn settle(
        &self,
        keys: &RepoKeys,
        op: Settle,
        lease: &str,
        reserved: &[String],
        tags: &[String],
    ) -> Result<(), StoreError> {
        let mut invocation = keys.every_key(&self.settle);
        invocation
            .arg(op.as_str())
            .arg(lease)
            .arg(now_ms())
            .arg(ms(self.options.lease) * 2 + 60_000)
            .arg(reserved.len())
            .arg(reserved)
            .arg(tags);
        self.run("settle", invocation).await.map(drop)
    }

    /// Settles without waiting: the registry's answer must not wait on the store.
    pub fn settle_later(
        self: &Arc<Self>,
        keys: RepoKeys,
        op: Settle,
        lease: String,
        reserved: Vec<String>,
        tags: Vec<String>,
    ) {
        let books = self.clone();
        let spawn = tokio::runtime::Handle::try_current();
        if let Ok(handle) = spawn {
            handle.spawn(async move {
                if let Err(error) = books.settle(&keys, op, &lease, &reserved, &tags).await {
                    // The lease runs out on its own and its expiry calls for a read.
                    tracing::warn!(%error, op = op.as_str(), "settling a lease in the state store failed");
                }
            });
        }
    }

    /// How long the read lock is held at most.
    pub fn options(&self) -> &SharedOptions {
        &self.options
    }

    /// `now` in the store's clock terms (wall-clock milliseconds).
    pub fn now_ms() -> u64 {
        now_ms()
    }
}

/// The answer of [`SharedBooks::begin_read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    Read,
    Wait,
    Decide,
}

/// What happens to a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    Commit,
    Release,
    Doubt,
    Remove,
    Stale,
}

impl Settle {
    fn as_str(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Release => "release",
            Self::Doubt => "doubt",
            Self::Remove => "remove",
            Self::Stale => "stale",
        }
    }
}

/// Lease and owner ids only need to differ between replicas and restarts.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_urls_parse_and_never_show_a_password() {
        assert_eq!(
            StateUrl::parse("memory", None, None).ok(),
            Some(StateUrl::Memory)
        );
        let single = StateUrl::parse("redis://:s3cret@127.0.0.1:6379/2", None, None).expect("url");
        assert!(matches!(&single, StateUrl::Single(u) if u.contains("s3cret")));
        assert!(!format!("{single:?}").contains("s3cret"));
        let tls = StateUrl::parse("rediss://r.example:6380", Some("gw"), Some("pw")).expect("url");
        assert!(matches!(&tls, StateUrl::Single(u) if u.starts_with("rediss://gw:pw@")));
        let cluster =
            StateUrl::parse("redis-cluster://a:7000,b:7001", None, Some("pw")).expect("url");
        match &cluster {
            StateUrl::Cluster(nodes) => {
                assert_eq!(nodes.len(), 2);
                assert!(
                    nodes.iter().all(|n| n.starts_with("redis://:pw@")),
                    "{nodes:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{cluster:?}").contains("pw"));
        for bad in [
            "",
            "redis:/x",
            "http://r:6379",
            "redis-cluster://",
            "valkey://x",
        ] {
            let got = StateUrl::parse(bad, None, None);
            assert!(got.is_err(), "{bad}");
        }
        let e = StateUrl::parse("http://u:topsecret@x", None, None).expect_err("bad");
        assert!(!e.to_string().contains("topsecret"), "{e}");
    }

    #[test]
    fn every_key_of_a_repository_shares_its_hash_slot() {
        let keys = RepoKeys::new("team/app", &TagFilter::default());
        for key in &keys.0 {
            assert!(key.starts_with("rg:{team/app}:"), "{key}");
        }
    }
}
