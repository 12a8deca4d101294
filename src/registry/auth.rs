//! Answering the registry's challenges: Basic, or the Docker token flow (fetch a token from the
//! realm, cache it per realm, service and scope, reuse it per repository).

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
use tokio::time::Instant;
use tracing::debug;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::RegistryClient;
use super::challenge::Challenge;
use super::credentials::{Basic, Snapshot};
use super::http::{origin_and_path, read_body, transport};
use crate::check::TagError;
use crate::metrics::Metrics;

// The fuzz targets' entry into the response parsers sits beside this file; declared here so
// the client's module list stays the client's.
#[path = "fuzzing.rs"]
mod fuzzing;

const MAX_TOKEN_BYTES: usize = 1 << 20;
/// Token lifetime when the token endpoint sends no `expires_in` (token spec).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);

impl RegistryClient {
    /// What to send after a 401, or `Unauthorized` when nothing new is left to try.
    pub(super) async fn answer(
        &self,
        repository: &str,
        challenge: Option<Challenge>,
        sent: &Auth,
        credentials: &Snapshot,
        rotated: bool,
    ) -> Result<Auth, TagError> {
        let unauthorized = TagError::Unauthorized {
            status: StatusCode::UNAUTHORIZED.as_u16(),
        };
        match challenge {
            None => Err(unauthorized),
            Some(Challenge::Basic) => {
                let Some(basic) = credentials.basic.clone() else {
                    return Err(unauthorized);
                };
                if matches!(sent, Auth::Basic(previous) if *previous == basic) {
                    return Err(unauthorized);
                }
                self.basic_challenged.store(true, Ordering::Relaxed);
                Ok(Auth::Basic(basic))
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let key = TokenKey {
                    realm,
                    service,
                    scope: scope.unwrap_or_else(|| format!("repository:{repository}:pull")),
                };
                if let Auth::Bearer {
                    key: sent_key,
                    fresh,
                    ..
                } = sent
                    && *sent_key == key
                {
                    self.tokens().forget(&key);
                    // The token was just issued for these credentials: asking again would get
                    // the same answer.
                    if *fresh && !rotated {
                        return Err(unauthorized);
                    }
                } else if let Some(token) = self.tokens().get(&key) {
                    return Ok(Auth::Bearer {
                        key,
                        token,
                        fresh: false,
                    });
                }
                let token = self.fetch_token(&key, credentials).await?;
                Ok(Auth::Bearer {
                    key,
                    token,
                    fresh: true,
                })
            }
        }
    }

    /// Token flow step 2 (protocol-facts 2.1): `GET realm?service=…&scope=…` with Basic
    /// credentials, or anonymously without any.
    async fn fetch_token(
        &self,
        key: &TokenKey,
        credentials: &Snapshot,
    ) -> Result<HeaderValue, TagError> {
        let mut url = Url::parse(&key.realm).map_err(|e| {
            TagError::InvalidResponse(format!("the token realm {:?} is not a URL: {e}", key.realm))
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TagError::InvalidResponse(
                "the token realm URL carries credentials".into(),
            ));
        }
        if !matches!(url.scheme(), "https" | "http") {
            return Err(TagError::InvalidResponse(format!(
                "the token realm uses `{}`",
                url.scheme()
            )));
        }
        // The realm gets the password: only the registry's own origin, or one the operator
        // listed, so a registry answer cannot send the gateway's credentials elsewhere.
        if !self.trusts_realm(&url) {
            return Err(TagError::InvalidResponse(format!(
                "the token realm {} is not the registry's own origin; trust it with --registry-token-realm",
                origin_and_path(&url)
            )));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &key.service {
                query.append_pair("service", service);
            }
            // The GET form repeats `scope` for several resources.
            for scope in key.scope.split_whitespace() {
                query.append_pair("scope", scope);
            }
        }
        let started = Instant::now();
        let http = self.http(credentials, &url)?;
        let mut request = http.get(url.clone());
        if let Some(basic) = &credentials.basic {
            request = request.basic_auth(&basic.username, Some(&basic.password));
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        debug!(
            realm = %origin_and_path(&url),
            service = key.service.as_deref().unwrap_or(""),
            scope = %key.scope,
            status = status.as_u16(),
            "registry token"
        );
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(TagError::Unauthorized {
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(TagError::Status {
                status: status.as_u16(),
            });
        }
        let body = read_body(response, MAX_TOKEN_BYTES).await?;
        // serde_json's messages name positions, never the input: the body holds the token.
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| {
            TagError::InvalidResponse(format!("the token response is not JSON: {e}"))
        })?;
        let token = [reply.token, reply.access_token]
            .into_iter()
            .flatten()
            .find(|t| !t.is_empty())
            .ok_or_else(|| {
                TagError::InvalidResponse(
                    "the token response has neither `token` nor `access_token`".into(),
                )
            })?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            TagError::InvalidResponse(
                "the token contains characters not allowed in a header".into(),
            )
        })?;
        value.set_sensitive(true);
        if let Some(usable) = usable_lifetime(reply.expires_in.as_ref().and_then(seconds)) {
            self.tokens()
                .insert(key.clone(), value.clone(), started + usable);
        }
        Ok(value)
    }

    pub(super) fn initial_auth(&self, repository: &str, credentials: &Snapshot) -> Auth {
        if let Some((key, token)) = self.tokens().for_repository(repository) {
            return Auth::Bearer {
                key,
                token,
                fresh: false,
            };
        }
        match &credentials.basic {
            Some(basic) if self.basic_challenged.load(Ordering::Relaxed) => {
                Auth::Basic(basic.clone())
            }
            _ => Auth::Anonymous,
        }
    }

    pub(super) fn tokens(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        // The cache holds no invariant a panicking holder could break half-way.
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(super) fn with_auth(request: reqwest::RequestBuilder, auth: &Auth) -> reqwest::RequestBuilder {
    match auth {
        Auth::Anonymous => request,
        Auth::Basic(basic) => request.basic_auth(&basic.username, Some(&basic.password)),
        Auth::Bearer { token, .. } => request.header(reqwest::header::AUTHORIZATION, token.clone()),
    }
}

#[derive(serde::Deserialize)]
struct TokenReply {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    /// Seconds; a number in practice, read leniently so an odd encoding only loses the lifetime.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

pub(super) fn seconds(value: &serde_json::Value) -> Option<Duration> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().map(Duration::from_secs).or_else(|| {
            n.as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
        }),
        serde_json::Value::String(s) => s.trim().parse().ok().map(Duration::from_secs),
        _ => None,
    }
}

/// How long a token is reused: its lifetime less a margin, so it is not presented at the moment
/// it expires. `None` when nothing is left after the margin: use once, do not cache.
pub(super) fn usable_lifetime(expires_in: Option<Duration>) -> Option<Duration> {
    let lifetime = expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME);
    let margin = TOKEN_EXPIRY_MARGIN.min(lifetime / 4);
    Some(lifetime - margin).filter(|usable| !usable.is_zero())
}

/// What goes in the `Authorization` header of the next request.
pub(super) enum Auth {
    Anonymous,
    Basic(Basic),
    /// `fresh`: fetched during this page's challenge, not taken from the cache.
    Bearer {
        key: TokenKey,
        token: HeaderValue,
        fresh: bool,
    },
}

/// Tokens are cached per (realm, service, scope), the identity of what the token grants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct TokenKey {
    realm: String,
    service: Option<String>,
    /// As the challenge gave it; several scopes are separated by spaces.
    scope: String,
}

/// Tokens kept at most. Each repository usually gets a token of its own (its scope names it), so
/// a flood of distinct repository names would otherwise keep one per name for a whole lifetime.
/// Past it the least recently used are forgotten; a forgotten token is fetched again when needed.
pub(super) const MAX_TOKENS: usize = 4_096;
/// Bytes of cached tokens and their keys kept at most: the realm decides a token's length (up to
/// [`MAX_TOKEN_BYTES`]), so a count alone does not bound memory.
pub(super) const MAX_TOKEN_CACHE_BYTES: usize = 8 << 20;
/// Repository-to-token links kept at most; several repositories may share one token.
pub(super) const MAX_TOKEN_REPOSITORIES: usize = 2 * MAX_TOKENS;

#[derive(Debug)]
struct Cached {
    token: HeaderValue,
    usable_until: Instant,
    /// The cache's clock at the last use, for least-recently-used eviction.
    used: u64,
    bytes: usize,
}

/// Tokens by what they grant, capped in count and bytes (see [`MAX_TOKENS`]).
#[derive(Default)]
pub(super) struct TokenCache {
    tokens: HashMap<TokenKey, Cached>,
    /// The key whose token last worked for a repository, so the next call presents it at once
    /// instead of collecting a 401 first.
    repositories: HashMap<String, (TokenKey, u64)>,
    bytes: usize,
    clock: u64,
    /// Unregistered until [`RegistryClient::report_tokens`] hands in the exported ones.
    size: Gauge,
    evictions: Counter,
}

impl TokenCache {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn get(&mut self, key: &TokenKey) -> Option<HeaderValue> {
        let now = self.tick();
        let cached = self.tokens.get_mut(key)?;
        if Instant::now() >= cached.usable_until {
            return None;
        }
        cached.used = now;
        Some(cached.token.clone())
    }

    fn for_repository(&mut self, repository: &str) -> Option<(TokenKey, HeaderValue)> {
        let now = self.tick();
        let (key, used) = self.repositories.get_mut(repository)?;
        *used = now;
        let key = key.clone();
        let token = self.get(&key)?;
        Some((key, token))
    }

    fn insert(&mut self, key: TokenKey, token: HeaderValue, usable_until: Instant) {
        let bytes = entry_bytes(&key, &token);
        if bytes > MAX_TOKEN_CACHE_BYTES / 16 {
            // A token this large is used once and not kept: a few of them would fill the cache.
            return;
        }
        let used = self.tick();
        if let Some(old) = self.tokens.remove(&key) {
            self.bytes -= old.bytes;
        }
        if self.tokens.len() >= MAX_TOKENS || self.bytes + bytes > MAX_TOKEN_CACHE_BYTES {
            self.make_room(bytes);
        }
        self.bytes += bytes;
        self.tokens.insert(
            key,
            Cached {
                token,
                usable_until,
                used,
                bytes,
            },
        );
        self.size.set(gauge_value(self.tokens.len()));
    }

    /// Drops expired tokens, then the least recently used until a tenth of each cap is free.
    /// Amortised: one sort per `MAX_TOKENS / 10` insertions at most.
    fn make_room(&mut self, incoming: usize) {
        let now = Instant::now();
        let before = self.tokens.len();
        self.tokens.retain(|_, cached| now < cached.usable_until);
        self.bytes = self.tokens.values().map(|c| c.bytes).sum();
        let keep_count = MAX_TOKENS - MAX_TOKENS / 10;
        let keep_bytes = MAX_TOKEN_CACHE_BYTES - MAX_TOKEN_CACHE_BYTES / 10;
        if self.tokens.len() > keep_count || self.bytes + incoming > keep_bytes {
            let mut by_use: Vec<(u64, TokenKey)> = self
                .tokens
                .iter()
                .map(|(key, cached)| (cached.used, key.clone()))
                .collect();
            by_use.sort_unstable_by_key(|(used, _)| *used);
            let mut evicted = 0u64;
            for (_, key) in by_use {
                if self.tokens.len() <= keep_count && self.bytes + incoming <= keep_bytes {
                    break;
                }
                if let Some(cached) = self.tokens.remove(&key) {
                    self.bytes -= cached.bytes;
                    evicted += 1;
                }
            }
            self.evictions.inc_by(evicted);
        }
        debug!(
            before,
            after = self.tokens.len(),
            "registry token cache made room"
        );
        let tokens = &self.tokens;
        self.repositories
            .retain(|_, (key, _)| tokens.contains_key(key));
    }

    pub(super) fn remember(&mut self, repository: &str, key: &TokenKey) {
        if !self.tokens.contains_key(key) {
            return;
        }
        let used = self.tick();
        if let Some((known, at)) = self.repositories.get_mut(repository) {
            if known != key {
                *known = key.clone();
            }
            *at = used;
            return;
        }
        if self.repositories.len() >= MAX_TOKEN_REPOSITORIES {
            let tokens = &self.tokens;
            self.repositories
                .retain(|_, (key, _)| tokens.contains_key(key));
            if self.repositories.len() >= MAX_TOKEN_REPOSITORIES {
                let mut by_use: Vec<(u64, String)> = self
                    .repositories
                    .iter()
                    .map(|(name, (_, used))| (*used, name.clone()))
                    .collect();
                by_use.sort_unstable_by_key(|(used, _)| *used);
                for (_, name) in by_use.into_iter().take(MAX_TOKEN_REPOSITORIES / 10) {
                    self.repositories.remove(&name);
                }
            }
        }
        self.repositories
            .insert(repository.to_owned(), (key.clone(), used));
    }

    fn forget(&mut self, key: &TokenKey) {
        if let Some(cached) = self.tokens.remove(key) {
            self.bytes -= cached.bytes;
            self.size.set(gauge_value(self.tokens.len()));
        }
    }

    /// Tokens kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// What an entry costs, near enough: its strings, twice for the key (it is also cloned into the
/// repository links), plus the maps' overhead.
fn entry_bytes(key: &TokenKey, token: &HeaderValue) -> usize {
    const OVERHEAD: usize = 160;
    let key_bytes = key.realm.len() + key.service.as_ref().map_or(0, String::len) + key.scope.len();
    token.len() + 2 * key_bytes + OVERHEAD
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl RegistryClient {
    /// Exports the token cache's size (`registry_gateway_registry_tokens`) and its evictions
    /// (`registry_gateway_registry_token_evictions_total`) through `metrics`.
    pub fn report_tokens(&self, metrics: &Metrics) {
        let mut tokens = self.tokens();
        tokens.size = metrics.registry_tokens.clone();
        tokens.evictions = metrics.registry_token_evictions.clone();
        let len = gauge_value(tokens.tokens.len());
        tokens.size.set(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> TokenKey {
        TokenKey {
            realm: "https://registry.example/token".into(),
            service: Some("registry.example".into()),
            scope: format!("repository:flood/{i}:pull"),
        }
    }

    fn token(len: usize) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {}", "t".repeat(len))).unwrap()
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn a_flood_of_scopes_keeps_at_most_max_tokens_and_the_recently_used_ones() {
        let mut cache = TokenCache::default();
        cache.insert(key(0), token(40), later());
        cache.remember("flood/0", &key(0));
        for i in 1..3 * MAX_TOKENS {
            cache.insert(key(i), token(40), later());
            cache.remember(&format!("flood/{i}"), &key(i));
            // The honest repository keeps using its token.
            assert!(cache.for_repository("flood/0").is_some(), "lost at {i}");
            assert!(cache.len() <= MAX_TOKENS);
            assert!(cache.repositories.len() <= MAX_TOKEN_REPOSITORIES);
        }
        assert!(cache.evictions.get() >= (2 * MAX_TOKENS) as u64);
        assert_eq!(cache.size.get(), cache.len() as i64);
        assert!(
            cache.get(&key(1)).is_none(),
            "the oldest unused token is evicted"
        );
        assert!(cache.get(&key(3 * MAX_TOKENS - 1)).is_some());
    }

    #[test]
    fn large_tokens_are_bounded_by_bytes_and_a_huge_one_is_not_kept() {
        let mut cache = TokenCache::default();
        for i in 0..1_000 {
            cache.insert(key(i), token(64 << 10), later());
            assert!(
                cache.bytes <= MAX_TOKEN_CACHE_BYTES,
                "{} bytes",
                cache.bytes
            );
        }
        assert_eq!(
            cache.bytes,
            cache.tokens.values().map(|c| c.bytes).sum::<usize>()
        );
        assert!(cache.len() < MAX_TOKEN_CACHE_BYTES / (64 << 10));
        cache.insert(key(5_000), token(MAX_TOKEN_BYTES - 16), later());
        assert!(cache.get(&key(5_000)).is_none());
    }

    #[test]
    fn expired_tokens_are_dropped_before_live_ones_are_evicted() {
        let mut cache = TokenCache::default();
        let past = Instant::now();
        for i in 0..MAX_TOKENS {
            cache.insert(key(i), token(8), past);
        }
        cache.insert(key(MAX_TOKENS), token(8), later());
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.evictions.get(), 0, "expiry is not eviction");
    }

    #[test]
    fn forgetting_and_replacing_a_token_keeps_the_byte_count() {
        let mut cache = TokenCache::default();
        cache.insert(key(1), token(100), later());
        cache.insert(key(1), token(200), later());
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes, entry_bytes(&key(1), &token(200)));
        cache.forget(&key(1));
        assert_eq!((cache.len(), cache.bytes, cache.size.get()), (0, 0, 0));
    }
}
