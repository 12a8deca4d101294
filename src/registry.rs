//! Tag lists from the registry over HTTP: the [`TagSource`] that `app` plugs into the checker.
//!
//! One `list_tags` call reads every page of `GET /v2/<name>/tags/list` under one deadline, the
//! authentication round trips included. Authentication follows the registry's challenge: Basic
//! (htpasswd registries, Harbor robots) or the Docker token flow (distribution with token auth,
//! Harbor without an `Authorization` header). Credentials are never logged and never appear in an
//! error; a mounted Secret directory is re-read when it changes, so rotation needs no restart.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, LINK, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::check::{TagError, TagSource};

/// A Link chain longer than this is a loop or an attack, not a repository.
const MAX_PAGES: usize = 10_000;
/// One page of 128-character tags at this size holds ~250,000 tags.
const MAX_PAGE_BYTES: usize = 32 << 20;
const MAX_TOKEN_BYTES: usize = 1 << 20;
const MAX_REDIRECTS: usize = 5;
/// Requests per page: first try, then one answer to each challenge (a rejected cached token, a
/// fresh token, rotated credentials). Bounds a registry that challenges forever.
const MAX_SENDS_PER_PAGE: usize = 4;
const CREDENTIAL_RECHECK: Duration = Duration::from_secs(1);
/// Token lifetime when the token endpoint sends no `expires_in` (token spec).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// Where tags are listed and how.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// The registry, or Harbor's external URL. `/v2/...` is appended to its path; it must be
    /// `http` or `https` and must not carry credentials.
    pub base_url: Url,
    pub credentials: Credentials,
    /// Deadline for one whole `list_tags` call: every page and every token fetch.
    pub timeout: Duration,
    /// Accept any TLS certificate and allow plain `http`, for the registry and the token realm.
    pub insecure: bool,
    /// `n` sent with every page request. `None` sends none and lets the registry decide;
    /// distribution 3.1.0 answers 400 to `n` above its `tags.maxtags` (default 1000).
    pub page_size: Option<u32>,
}

/// How the gateway identifies itself to the registry.
#[derive(Clone)]
pub enum Credentials {
    /// Anonymous.
    None,
    Static {
        username: String,
        password: String,
    },
    /// A mounted Kubernetes Secret: files `username`, `password` and optionally `insecure`
    /// (`true`/`false`, OR-ed with [`RegistryConfig::insecure`]). Trailing line breaks are
    /// dropped; an empty `username` means anonymous. The files are re-read when their
    /// modification stamps change (checked at most once a second) and after every 401. A read
    /// that fails after start-up keeps the previous credentials.
    Directory(PathBuf),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Static { username, .. } => f
                .debug_struct("Static")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Self::Directory(path) => f.debug_tuple("Directory").field(path).finish(),
        }
    }
}

/// Why a [`RegistryClient`] could not be built. Failures of a call are [`TagError`]s.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registry URL scheme `{scheme}` is not supported; use http or https")]
    UnsupportedScheme { scheme: String },
    #[error("the registry URL must not contain credentials; configure them separately")]
    CredentialsInUrl,
    #[error("registry URL {url} is plain http, which needs `insecure`")]
    PlainHttp { url: Url },
    #[error("the page size must be at least 1 (n=0 lists no tags)")]
    ZeroPageSize,
    #[error("cannot read registry credentials from {}", path.display())]
    ReadCredentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry credentials in {}: {problem}", path.display())]
    InvalidCredentials {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("cannot build the registry HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Lists tags from an OCI registry; see the module documentation.
pub struct RegistryClient {
    base_url: Url,
    timeout: Duration,
    page_size: Option<u32>,
    insecure: bool,
    verified: reqwest::Client,
    unverified: reqwest::Client,
    credentials: CredentialStore,
    /// Set by the first Basic challenge: from then on Basic goes with every request.
    basic_challenged: AtomicBool,
    tokens: std::sync::Mutex<TokenCache>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base_url", &self.base_url.as_str())
            .field("timeout", &self.timeout)
            .field("page_size", &self.page_size)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// Checks the configuration (scheme, `insecure` for plain http, a readable credentials
    /// directory) and builds the HTTP clients. Installs rustls' `ring` provider as the process
    /// default if none is installed yet: reqwest is built without one.
    pub fn new(config: RegistryConfig) -> Result<Self, Error> {
        let RegistryConfig {
            base_url,
            credentials,
            timeout,
            insecure,
            page_size,
        } = config;
        if !base_url.username().is_empty() || base_url.password().is_some() {
            return Err(Error::CredentialsInUrl);
        }
        if !matches!(base_url.scheme(), "http" | "https") {
            return Err(Error::UnsupportedScheme {
                scheme: base_url.scheme().to_owned(),
            });
        }
        if page_size == Some(0) {
            return Err(Error::ZeroPageSize);
        }
        let credentials = CredentialStore::new(credentials)?;
        if base_url.scheme() == "http" && !(insecure || credentials.initial_insecure()) {
            return Err(Error::PlainHttp { url: base_url });
        }
        // Already installed (by us or by the embedding program) is fine: reqwest uses whichever
        // provider is the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self {
            base_url,
            timeout,
            page_size,
            insecure,
            verified: http_client(false).map_err(Error::Client)?,
            unverified: http_client(true).map_err(Error::Client)?,
            credentials,
            basic_challenged: AtomicBool::new(false),
            tokens: std::sync::Mutex::new(TokenCache::default()),
        })
    }

    async fn list_all(&self, repository: &str) -> Result<Vec<String>, TagError> {
        let mut url = tag_list_url(&self.base_url, repository, self.page_size)?;
        let mut credentials = self.credentials.current(false).await;
        let mut auth = self.initial_auth(repository, &credentials);
        let mut tags = Vec::new();
        for page in 1..=MAX_PAGES {
            let response = self
                .fetch_page(repository, page, &url, &mut auth, &mut credentials)
                .await?;
            let status = response.status();
            if status == StatusCode::NOT_FOUND && page == 1 {
                // NAME_UNKNOWN: a first push to a new repository. A 404 on a later page is not
                // that, and reading it as "no tags" would let the tag limit fail open.
                return Ok(Vec::new());
            }
            if status == StatusCode::FORBIDDEN {
                return Err(TagError::Unauthorized {
                    status: status.as_u16(),
                });
            }
            if !status.is_success() {
                return Err(TagError::Status {
                    status: status.as_u16(),
                });
            }
            let next = next_page(response.headers(), response.url(), &self.base_url)?;
            let body = read_body(response, MAX_PAGE_BYTES).await?;
            let list: TagList = serde_json::from_slice(&body).map_err(|e| {
                TagError::InvalidResponse(format!("tag list page {page} is not a tag list: {e}"))
            })?;
            tags.extend(list.tags.unwrap_or_default());
            match next {
                None => {
                    // Pages are slices of one sorted list; a tag moved or added between page
                    // reads can show up twice, and each one counts against the limit.
                    tags.sort_unstable();
                    tags.dedup();
                    return Ok(tags);
                }
                Some(next) if next == url => {
                    return Err(TagError::InvalidResponse(format!(
                        "tag list page {page} links to itself"
                    )));
                }
                Some(next) => url = next,
            }
        }
        Err(TagError::InvalidResponse(format!(
            "the tag list has more than {MAX_PAGES} pages"
        )))
    }

    /// Sends one page request, answering authentication challenges. Returns the first response
    /// that is not a 401.
    async fn fetch_page(
        &self,
        repository: &str,
        page: usize,
        url: &Url,
        auth: &mut Auth,
        credentials: &mut Arc<Snapshot>,
    ) -> Result<reqwest::Response, TagError> {
        for _ in 0..MAX_SENDS_PER_PAGE {
            let http = self.http(credentials, url)?;
            let response = with_auth(http.get(url.clone()), auth)
                .send()
                .await
                .map_err(transport)?;
            let status = response.status();
            debug!(
                repository,
                page,
                status = status.as_u16(),
                "registry tag list page"
            );
            if status != StatusCode::UNAUTHORIZED {
                if let Auth::Bearer { key, .. } = auth {
                    self.tokens().remember(repository, key);
                }
                return Ok(response);
            }
            let challenge = select_challenge(response.headers());
            drop(response);
            let generation = credentials.generation;
            *credentials = self.credentials.current(true).await;
            let rotated = credentials.generation != generation;
            *auth = self
                .answer(repository, challenge, auth, credentials, rotated)
                .await?;
        }
        Err(TagError::Unauthorized {
            status: StatusCode::UNAUTHORIZED.as_u16(),
        })
    }

    /// What to send after a 401, or `Unauthorized` when nothing new is left to try.
    async fn answer(
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
        match url.scheme() {
            "https" => {}
            // The realm gets the password: not in clear text unless the operator said so.
            "http" if self.insecure || credentials.insecure => {}
            scheme => {
                return Err(TagError::InvalidResponse(format!(
                    "the token realm uses `{scheme}`; plain http needs `insecure`"
                )));
            }
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

    fn initial_auth(&self, repository: &str, credentials: &Snapshot) -> Auth {
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

    fn http(&self, credentials: &Snapshot, url: &Url) -> Result<&reqwest::Client, TagError> {
        if self.insecure || credentials.insecure {
            Ok(&self.unverified)
        } else if url.scheme() == "https" {
            Ok(&self.verified)
        } else {
            // Reachable when a credentials directory turned `insecure` off after start-up.
            Err(TagError::Transport(format!(
                "{} is plain http, which needs `insecure`",
                origin_and_path(url)
            )))
        }
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        // The cache holds no invariant a panicking holder could break half-way.
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TagSource for RegistryClient {
    /// Every tag of `repository`, sorted and without repeats; `Ok(vec![])` when the registry
    /// does not know the repository. The whole call, token fetches included, is bounded by
    /// [`RegistryConfig::timeout`].
    async fn list_tags(&self, repository: &str) -> Result<Vec<String>, TagError> {
        tokio::time::timeout(self.timeout, self.list_all(repository))
            .await
            .unwrap_or(Err(TagError::Timeout(self.timeout)))
    }
}

fn http_client(insecure: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .https_only(!insecure)
        .tls_danger_accept_invalid_certs(insecure)
        .redirect(same_origin_redirects())
        .user_agent(concat!("registry-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Redirects are followed on the origin of the first request only: the Link rule, applied to
/// redirects. A cross-origin redirect comes back as its 3xx status.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        let next = attempt.url();
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == next.origin());
        if same_origin && next.username().is_empty() && next.password().is_none() {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

fn with_auth(request: reqwest::RequestBuilder, auth: &Auth) -> reqwest::RequestBuilder {
    match auth {
        Auth::Anonymous => request,
        Auth::Basic(basic) => request.basic_auth(&basic.username, Some(&basic.password)),
        Auth::Bearer { token, .. } => request.header(reqwest::header::AUTHORIZATION, token.clone()),
    }
}

/// `{base}/v2/<name>/tags/list[?n=…]`, the name's slashes kept as path separators.
fn tag_list_url(base: &Url, repository: &str, page_size: Option<u32>) -> Result<Url, TagError> {
    // The URL library drops `.` and `..` segments silently, which would list another repository.
    if repository
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(TagError::InvalidResponse(format!(
            "repository name {repository:?} has an empty, `.` or `..` path segment"
        )));
    }
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| TagError::InvalidResponse(format!("{base} cannot carry a path")))?
        .pop_if_empty()
        .push("v2")
        .extend(repository.split('/'))
        .extend(["tags", "list"]);
    if let Some(n) = page_size {
        url.query_pairs_mut().append_pair("n", &n.to_string());
    }
    Ok(url)
}

/// The `rel="next"` target of the response's Link headers, resolved against the URL that was
/// requested and held to the registry's origin.
fn next_page(headers: &HeaderMap, requested: &Url, base: &Url) -> Result<Option<Url>, TagError> {
    for value in headers.get_all(LINK) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let Some(target) = parse_next_link(&text) else {
            continue;
        };
        let mut next = requested.join(target).map_err(|e| {
            TagError::InvalidResponse(format!("the next-page Link {target:?} is not a URL: {e}"))
        })?;
        next.set_fragment(None);
        if next.origin() != base.origin() {
            return Err(TagError::InvalidResponse(format!(
                "the next-page Link points to another origin ({})",
                next.origin().ascii_serialization()
            )));
        }
        if !next.username().is_empty() || next.password().is_some() {
            return Err(TagError::InvalidResponse(
                "the next-page Link carries credentials".into(),
            ));
        }
        return Ok(Some(next));
    }
    Ok(None)
}

async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, TagError> {
    let too_large =
        || TagError::InvalidResponse(format!("the response body exceeds {limit} bytes"));
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error as text: the URL's origin and path (never a query, where a realm's service and
/// scope sit) and the cause chain. Credentials only travel in headers, which reqwest never
/// prints.
fn transport(error: reqwest::Error) -> TagError {
    let target = error.url().map(origin_and_path);
    let error = error.without_url();
    let mut text = match target {
        Some(target) => format!("{target}: {error}"),
        None => error.to_string(),
    };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    TagError::Transport(text)
}

fn origin_and_path(url: &Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

#[derive(serde::Deserialize)]
struct TagList {
    /// distribution answers `null` for a repository whose tags were all deleted.
    #[serde(default)]
    tags: Option<Vec<String>>,
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

fn seconds(value: &serde_json::Value) -> Option<Duration> {
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
fn usable_lifetime(expires_in: Option<Duration>) -> Option<Duration> {
    let lifetime = expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME);
    let margin = TOKEN_EXPIRY_MARGIN.min(lifetime / 4);
    Some(lifetime - margin).filter(|usable| !usable.is_zero())
}

// ---------------------------------------------------------------------------------------------
// Authentication state

#[derive(Clone, PartialEq, Eq)]
struct Basic {
    username: String,
    password: String,
}

/// What goes in the `Authorization` header of the next request.
enum Auth {
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
struct TokenKey {
    realm: String,
    service: Option<String>,
    /// As the challenge gave it; several scopes are separated by spaces.
    scope: String,
}

#[derive(Default)]
struct TokenCache {
    tokens: HashMap<TokenKey, (HeaderValue, Instant)>,
    /// The key whose token last worked for a repository, so the next call presents it at once
    /// instead of collecting a 401 first.
    repositories: HashMap<String, TokenKey>,
}

impl TokenCache {
    fn get(&self, key: &TokenKey) -> Option<HeaderValue> {
        let (token, usable_until) = self.tokens.get(key)?;
        (Instant::now() < *usable_until).then(|| token.clone())
    }

    fn for_repository(&self, repository: &str) -> Option<(TokenKey, HeaderValue)> {
        let key = self.repositories.get(repository)?;
        Some((key.clone(), self.get(key)?))
    }

    fn insert(&mut self, key: TokenKey, token: HeaderValue, usable_until: Instant) {
        // Pruning on insert bounds both maps by the tokens issued within one lifetime.
        let now = Instant::now();
        self.tokens.retain(|_, (_, until)| now < *until);
        let tokens = &self.tokens;
        self.repositories.retain(|_, key| tokens.contains_key(key));
        self.tokens.insert(key, (token, usable_until));
    }

    fn remember(&mut self, repository: &str, key: &TokenKey) {
        if self.tokens.contains_key(key) && self.repositories.get(repository) != Some(key) {
            self.repositories.insert(repository.to_owned(), key.clone());
        }
    }

    fn forget(&mut self, key: &TokenKey) {
        self.tokens.remove(key);
    }
}

/// Credentials as of one read.
struct Snapshot {
    basic: Option<Basic>,
    insecure: bool,
    /// Changes whenever `basic` or `insecure` does, so a caller can tell rotation happened.
    generation: u64,
}

enum CredentialStore {
    Fixed(Arc<Snapshot>),
    Directory {
        path: PathBuf,
        state: tokio::sync::Mutex<DirectoryState>,
    },
}

struct DirectoryState {
    current: Arc<Snapshot>,
    stamp: Stamp,
    checked_at: Instant,
}

impl CredentialStore {
    fn new(credentials: Credentials) -> Result<Self, Error> {
        let fixed = |basic| {
            Self::Fixed(Arc::new(Snapshot {
                basic,
                insecure: false,
                generation: 0,
            }))
        };
        match credentials {
            Credentials::None => Ok(fixed(None)),
            Credentials::Static { username, password } => {
                Ok(fixed(Some(Basic { username, password })))
            }
            Credentials::Directory(path) => {
                let read = read_directory(&path).map_err(|problem| match problem {
                    DirectoryProblem::Io(source) => Error::ReadCredentials {
                        path: path.clone(),
                        source,
                    },
                    DirectoryProblem::Invalid(problem) => Error::InvalidCredentials {
                        path: path.clone(),
                        problem,
                    },
                })?;
                let current = Arc::new(Snapshot {
                    basic: read.basic,
                    insecure: read.insecure,
                    generation: 0,
                });
                let state = DirectoryState {
                    current,
                    stamp: read.stamp,
                    checked_at: Instant::now(),
                };
                Ok(Self::Directory {
                    path,
                    state: tokio::sync::Mutex::new(state),
                })
            }
        }
    }

    fn initial_insecure(&self) -> bool {
        match self {
            Self::Fixed(snapshot) => snapshot.insecure,
            Self::Directory { state, .. } => {
                state.try_lock().is_ok_and(|state| state.current.insecure)
            }
        }
    }

    /// The credentials to use now. `force` (after a 401) re-reads the files whatever their
    /// stamps say: a rewrite within the file system's timestamp granularity looks unchanged.
    async fn current(&self, force: bool) -> Arc<Snapshot> {
        let (path, state) = match self {
            Self::Fixed(snapshot) => return snapshot.clone(),
            Self::Directory { path, state } => (path, state),
        };
        let mut state = state.lock().await;
        if !force && state.checked_at.elapsed() < CREDENTIAL_RECHECK {
            return state.current.clone();
        }
        state.checked_at = Instant::now();
        let known = state.stamp.clone();
        let dir = path.clone();
        // Secrets are on tmpfs, but a stat must not stall a runtime worker if they are not.
        let read = tokio::task::spawn_blocking(move || {
            if !force && stamp(&dir) == known {
                return Ok(None);
            }
            read_directory(&dir).map(Some)
        })
        .await;
        match read {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(read))) => {
                state.stamp = read.stamp;
                if read.basic != state.current.basic || read.insecure != state.current.insecure {
                    let generation = state.current.generation + 1;
                    state.current = Arc::new(Snapshot {
                        basic: read.basic,
                        insecure: read.insecure,
                        generation,
                    });
                    debug!(path = %path.display(), generation, "registry credentials reloaded");
                }
            }
            // A Secret update swaps a symlink; a read between unlink and link finds nothing.
            // The previous credentials are the best guess, and the next check tries again.
            Ok(Err(problem)) => {
                warn!(path = %path.display(), %problem, "cannot re-read registry credentials; keeping the previous ones");
            }
            Err(join) => {
                warn!(path = %path.display(), error = %join, "cannot re-read registry credentials; keeping the previous ones");
            }
        }
        state.current.clone()
    }
}

struct DirectoryRead {
    basic: Option<Basic>,
    insecure: bool,
    stamp: Stamp,
}

#[derive(Debug)]
enum DirectoryProblem {
    Io(std::io::Error),
    Invalid(&'static str),
}

impl fmt::Display for DirectoryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the file contents: they are the secret.
        match self {
            Self::Io(e) => e.fmt(f),
            Self::Invalid(problem) => f.write_str(problem),
        }
    }
}

const CREDENTIAL_FILES: [&str; 3] = ["username", "password", "insecure"];

fn read_directory(dir: &Path) -> Result<DirectoryRead, DirectoryProblem> {
    // The stamp is taken first: a change during the read shows up at the next check.
    let stamp = stamp(dir);
    let username = read_optional(&dir.join("username"))?;
    let password = read_optional(&dir.join("password"))?;
    let insecure = read_optional(&dir.join("insecure"))?;
    let basic = match (username, password) {
        (None, None) => {
            return Err(DirectoryProblem::Invalid(
                "neither `username` nor `password` exists",
            ));
        }
        (None, Some(_)) => {
            return Err(DirectoryProblem::Invalid(
                "`password` exists without `username`",
            ));
        }
        (Some(_), None) => {
            return Err(DirectoryProblem::Invalid(
                "`username` exists without `password`",
            ));
        }
        (Some(username), Some(password)) => {
            let username = username.trim();
            // `kubectl create secret --from-file` keeps the file's final newline.
            let password = password.trim_end_matches(['\r', '\n']);
            (!username.is_empty()).then(|| Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            })
        }
    };
    let insecure = match insecure.as_deref().map(str::trim) {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") || v.is_empty() => false,
        Some(_) => {
            return Err(DirectoryProblem::Invalid(
                "`insecure` must be `true` or `false`",
            ));
        }
    };
    Ok(DirectoryRead {
        basic,
        insecure,
        stamp,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, DirectoryProblem> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| DirectoryProblem::Invalid("a credentials file is not UTF-8 text")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DirectoryProblem::Io(e)),
    }
}

/// Modification stamp of the credential files, through the `..data` symlink a Secret mount uses:
/// an update creates new files, so the target's stamp changes.
type Stamp = Vec<Option<FileStamp>>;

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn stamp(dir: &Path) -> Stamp {
    CREDENTIAL_FILES
        .iter()
        .map(|name| {
            let meta = std::fs::metadata(dir.join(name)).ok()?;
            Some(FileStamp {
                modified: meta.modified().ok(),
                len: meta.len(),
                #[cfg(unix)]
                inode: std::os::unix::fs::MetadataExt::ino(&meta),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Header parsing

/// The challenge the client answers, chosen from every `WWW-Authenticate` header: Bearer when
/// one with a realm is offered, else Basic.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

fn select_challenge(headers: &HeaderMap) -> Option<Challenge> {
    let offered: Vec<RawChallenge> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .flat_map(|value| parse_challenges(&String::from_utf8_lossy(value.as_bytes())))
        .collect();
    let bearer = offered.iter().find_map(|c| {
        let realm = c.param("realm").filter(|r| !r.is_empty())?;
        (c.scheme == "bearer").then(|| Challenge::Bearer {
            realm: realm.to_owned(),
            service: c.param("service").map(str::to_owned),
            scope: c
                .param("scope")
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned),
        })
    });
    bearer.or_else(|| {
        offered
            .iter()
            .any(|c| c.scheme == "basic")
            .then_some(Challenge::Basic)
    })
}

/// One challenge as written: lower-cased scheme and parameter names, unquoted values.
#[derive(Debug, PartialEq, Eq)]
struct RawChallenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl RawChallenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// RFC 9110 §11.6.1 challenges: `scheme [param=value|"quoted, with commas", …]`, several
/// challenges comma-separated in one header. Lenient: junk is skipped, not fatal.
fn parse_challenges(text: &str) -> Vec<RawChallenge> {
    let mut cursor = Cursor { text, pos: 0 };
    let mut challenges = Vec::new();
    loop {
        cursor.skip(|b| b == b',' || is_space(b));
        if cursor.at_end() {
            return challenges;
        }
        let scheme = cursor.token();
        if scheme.is_empty() {
            // Junk: skip to the next ASCII delimiter, which is always a UTF-8 boundary.
            cursor.skip(|b| !is_tchar(b) && b != b',' && !is_space(b));
            continue;
        }
        let mut challenge = RawChallenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        loop {
            cursor.skip(|b| b == b',' || is_space(b));
            let start = cursor.pos;
            let name = cursor.token();
            if name.is_empty() {
                if cursor.at_end() {
                    break;
                }
                // Not a parameter (a token68 such as `abc/+`): skip to the next comma.
                cursor.skip(|b| b != b',');
                continue;
            }
            cursor.skip(is_space);
            if !cursor.eat(b'=') {
                // A bare token starts the next challenge.
                cursor.pos = start;
                break;
            }
            if cursor.peek() == Some(b'=') {
                // token68 padding (`abc==`): no parameter.
                cursor.skip(|b| b == b'=');
                continue;
            }
            cursor.skip(is_space);
            let value = if cursor.peek() == Some(b'"') {
                cursor.quoted()
            } else {
                cursor.take(|b| b != b',' && !is_space(b)).to_owned()
            };
            challenge.params.push((name.to_ascii_lowercase(), value));
        }
        challenges.push(challenge);
    }
}

/// The target of the first `rel="next"` link in one Link header value (RFC 8288):
/// `<url>; rel="next", <url>; rel=prev`. `rel` may hold several space-separated types.
fn parse_next_link(text: &str) -> Option<&str> {
    let mut cursor = Cursor { text, pos: 0 };
    loop {
        cursor.skip(|b| b == b',' || is_space(b));
        if !cursor.eat(b'<') {
            return None;
        }
        let target = cursor.take(|b| b != b'>');
        if !cursor.eat(b'>') {
            return None;
        }
        let mut next = false;
        loop {
            cursor.skip(is_space);
            if !cursor.eat(b';') {
                break;
            }
            cursor.skip(is_space);
            let name = cursor.token();
            cursor.skip(is_space);
            if !cursor.eat(b'=') {
                continue;
            }
            cursor.skip(is_space);
            let value = if cursor.peek() == Some(b'"') {
                cursor.quoted()
            } else {
                cursor
                    .take(|b| b != b';' && b != b',' && !is_space(b))
                    .to_owned()
            };
            if name.eq_ignore_ascii_case("rel")
                && value
                    .split_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
            {
                next = true;
            }
        }
        if next {
            return Some(target.trim());
        }
        // Skip whatever is left of this link-value.
        cursor.skip(|b| b != b',');
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Byte cursor over header text. Every delimiter is ASCII, so slicing at them keeps UTF-8 valid.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn take(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn skip(&mut self, skip: impl Fn(u8) -> bool) {
        self.take(skip);
    }

    fn token(&mut self) -> &'a str {
        self.take(is_tchar)
    }

    /// A quoted-string at the cursor, unescaped; an unterminated one runs to the end.
    fn quoted(&mut self) -> String {
        self.eat(b'"');
        let mut value = String::new();
        let mut chars = self.text[self.pos..].char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += offset + 1;
                    return value;
                }
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                c => value.push(c),
            }
        }
        self.pos = self.text.len();
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn challenges_are_parsed_with_quoted_commas_and_several_per_header() {
        type Expected<'a> = &'a [(&'a str, &'a [(&'a str, &'a str)])];
        let cases: &[(&str, Expected<'_>)] = &[
            (
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull,push""#,
                &[(
                    "bearer",
                    &[
                        ("realm", "https://auth.example/token"),
                        ("service", "registry.example"),
                        ("scope", "repository:team/app:pull,push"),
                    ],
                )],
            ),
            (
                r#"Basic realm="harbor""#,
                &[("basic", &[("realm", "harbor")])],
            ),
            ("basic", &[("basic", &[])]),
            (
                r#"BEARER Realm = "a\"b" , Error="invalid_token""#,
                &[("bearer", &[("realm", "a\"b"), ("error", "invalid_token")])],
            ),
            (
                r#"Basic realm="x", Bearer realm="https://t/token",service=reg"#,
                &[
                    ("basic", &[("realm", "x")]),
                    (
                        "bearer",
                        &[("realm", "https://t/token"), ("service", "reg")],
                    ),
                ],
            ),
            (
                "Bearer realm=https://t/token,service=reg",
                &[(
                    "bearer",
                    &[("realm", "https://t/token"), ("service", "reg")],
                )],
            ),
            (
                "Negotiate abc==, Basic realm=r",
                &[("negotiate", &[]), ("basic", &[("realm", "r")])],
            ),
            (
                r#"Bearer realm="unterminated"#,
                &[("bearer", &[("realm", "unterminated")])],
            ),
            ("", &[]),
            (" , ,", &[]),
        ];
        for (header, expected) in cases {
            let expected: Vec<RawChallenge> = expected
                .iter()
                .map(|(scheme, p)| RawChallenge {
                    scheme: (*scheme).to_owned(),
                    params: params(p),
                })
                .collect();
            assert_eq!(parse_challenges(header), expected, "{header}");
        }
    }

    #[test]
    fn bearer_is_preferred_and_needs_a_realm() {
        let cases: &[(&[&str], Option<Challenge>)] = &[
            (&[r#"Basic realm="r""#], Some(Challenge::Basic)),
            (
                &[
                    r#"Basic realm="r""#,
                    r#"Bearer realm="https://t",scope="repository:a:pull""#,
                ],
                Some(Challenge::Bearer {
                    realm: "https://t".into(),
                    service: None,
                    scope: Some("repository:a:pull".into()),
                }),
            ),
            (&[r#"Bearer service="s""#], None),
            (
                &[r#"Bearer realm="https://t",scope="""#],
                Some(Challenge::Bearer {
                    realm: "https://t".into(),
                    service: None,
                    scope: None,
                }),
            ),
            (&[r#"Digest realm="r",nonce="n""#], None),
            (&[], None),
        ];
        for (values, expected) in cases {
            let mut headers = HeaderMap::new();
            for value in *values {
                headers.append(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_str(value).expect("valid header"),
                );
            }
            assert_eq!(select_challenge(&headers), *expected, "{values:?}");
        }
    }

    #[test]
    fn the_next_link_is_found_among_other_links_and_forms() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                r#"</v2/a/tags/list?last=b&n=2>; rel="next""#,
                Some("/v2/a/tags/list?last=b&n=2"),
            ),
            (
                "</v2/a/tags/list?last=b>;rel=next",
                Some("/v2/a/tags/list?last=b"),
            ),
            (
                r#"<https://r/p?a=1,2>; rel="prev", <https://r/n?a=3,4>; rel="next""#,
                Some("https://r/n?a=3,4"),
            ),
            (
                r#"<list?last=x>; title="a, b; c"; rel="first next""#,
                Some("list?last=x"),
            ),
            (r#"<x>; REL="Next""#, Some("x")),
            (r#"</v2/a/tags/list?last=b>; rel="prev""#, None),
            ("</v2/a/tags/list?last=b>", None),
            ("garbage", None),
            ("<unterminated; rel=next", None),
            ("", None),
        ];
        for (header, expected) in cases {
            assert_eq!(parse_next_link(header), *expected, "{header}");
        }
    }

    #[test]
    fn next_links_resolve_against_the_request_and_stay_on_the_origin() {
        let base = Url::parse("https://registry.example/").expect("url");
        let requested = Url::parse("https://registry.example/v2/a/b/tags/list?n=2").expect("url");
        let cases: &[(&str, Result<Option<&str>, ()>)] = &[
            (
                "</v2/a/b/tags/list?last=x&n=2>; rel=next",
                Ok(Some("https://registry.example/v2/a/b/tags/list?last=x&n=2")),
            ),
            (
                "<list?last=x>; rel=next",
                Ok(Some("https://registry.example/v2/a/b/tags/list?last=x")),
            ),
            (
                "<https://registry.example:443/v2/a/b/tags/list?last=x>; rel=next",
                Ok(Some("https://registry.example/v2/a/b/tags/list?last=x")),
            ),
            (
                "<http://registry.example/v2/a/b/tags/list?last=x>; rel=next",
                Err(()),
            ),
            ("<https://registry.example:8443/v2/x>; rel=next", Err(())),
            ("<https://evil.example/v2/x>; rel=next", Err(())),
            ("<//evil.example/v2/x>; rel=next", Err(())),
            ("<https://u:p@registry.example/v2/x>; rel=next", Err(())),
            ("</v2/a/b/tags/list?last=x>; rel=prev", Ok(None)),
        ];
        for (link, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(LINK, HeaderValue::from_str(link).expect("valid header"));
            let got = next_page(&headers, &requested, &base);
            match (got, expected) {
                (Ok(got), Ok(expected)) => {
                    assert_eq!(got.as_ref().map(Url::as_str), *expected, "{link}")
                }
                (Err(TagError::InvalidResponse(_)), Err(())) => {}
                (got, _) => panic!("{link}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn tag_list_urls_keep_slashes_and_refuse_dot_segments() {
        let root = Url::parse("https://r.example").expect("url");
        let prefixed = Url::parse("https://r.example/mirror/?x=1").expect("url");
        let cases: &[(&Url, &str, Option<u32>, Option<&str>)] = &[
            (
                &root,
                "app",
                None,
                Some("https://r.example/v2/app/tags/list"),
            ),
            (
                &root,
                "team/app/web",
                Some(100),
                Some("https://r.example/v2/team/app/web/tags/list?n=100"),
            ),
            (
                &prefixed,
                "a/b",
                None,
                Some("https://r.example/mirror/v2/a/b/tags/list"),
            ),
            (
                &root,
                "a b",
                None,
                Some("https://r.example/v2/a%20b/tags/list"),
            ),
            (&root, "a/../b", None, None),
            (&root, "./a", None, None),
            (&root, "a//b", None, None),
            (&root, "a/", None, None),
            (&root, "", None, None),
        ];
        for (base, repository, n, expected) in cases {
            let got = tag_list_url(base, repository, *n).ok();
            assert_eq!(got.as_ref().map(Url::as_str), *expected, "{repository}");
        }
    }

    #[test]
    fn token_lifetimes_default_to_sixty_seconds_less_a_margin() {
        let s = Duration::from_secs;
        let cases = [
            (None, Some(s(50))),
            (Some(s(300)), Some(s(290))),
            (Some(s(1800)), Some(s(1790))),
            (Some(s(20)), Some(s(15))),
            (Some(s(0)), None),
        ];
        for (expires_in, expected) in cases {
            assert_eq!(usable_lifetime(expires_in), expected, "{expires_in:?}");
        }
        let cases = [
            (serde_json::json!(300), Some(s(300))),
            (serde_json::json!(1.5), Some(Duration::from_millis(1500))),
            (serde_json::json!("60"), Some(s(60))),
            (serde_json::json!(-1), None),
            (serde_json::json!(null), None),
        ];
        for (value, expected) in cases {
            assert_eq!(seconds(&value), expected, "{value}");
        }
    }

    #[test]
    fn credential_directories_are_read_with_trimming_and_checked() {
        type Files<'a> = &'a [(&'a str, &'a str)];
        type Read<'a> = (Option<(&'a str, &'a str)>, bool);
        let cases: &[(Files<'_>, Result<Read<'_>, &str>)] = &[
            (
                &[("username", "robot$p+ci\n"), ("password", "s3cret\n")],
                Ok((Some(("robot$p+ci", "s3cret")), false)),
            ),
            (
                &[
                    ("username", "u"),
                    ("password", " p "),
                    ("insecure", " TRUE\n"),
                ],
                Ok((Some(("u", " p ")), true)),
            ),
            (
                &[("username", ""), ("password", ""), ("insecure", "false")],
                Ok((None, false)),
            ),
            (
                &[("username", "u")],
                Err("`username` exists without `password`"),
            ),
            (
                &[("password", "p")],
                Err("`password` exists without `username`"),
            ),
            (&[], Err("neither `username` nor `password` exists")),
            (
                &[("username", "u"), ("password", "p"), ("insecure", "yes")],
                Err("`insecure` must be `true` or `false`"),
            ),
        ];
        for (files, expected) in cases {
            let dir = tempfile::tempdir().expect("temp dir");
            for (name, text) in *files {
                std::fs::write(dir.path().join(name), text).expect("write");
            }
            let got = read_directory(dir.path());
            match (got, expected) {
                (Ok(read), Ok((basic, insecure))) => {
                    let got = read
                        .basic
                        .as_ref()
                        .map(|b| (b.username.as_str(), b.password.as_str()));
                    assert_eq!((got, read.insecure), (*basic, *insecure), "{files:?}");
                }
                (Err(DirectoryProblem::Invalid(problem)), Err(expected)) => {
                    assert_eq!(problem, *expected)
                }
                (got, _) => panic!("{files:?}: unexpected {:?}", got.map(|r| r.insecure)),
            }
        }
    }

    #[test]
    fn construction_refuses_unsafe_or_meaningless_configurations() {
        let config = |url: &str, insecure: bool, page_size: Option<u32>| RegistryConfig {
            base_url: Url::parse(url).expect("url"),
            credentials: Credentials::None,
            timeout: Duration::from_secs(1),
            insecure,
            page_size,
        };
        let cases = [
            (config("http://r.example", false, None), Some("plain http")),
            (config("http://r.example", true, None), None),
            (config("https://r.example", false, Some(1000)), None),
            (
                config("https://u:p@r.example", false, None),
                Some("must not contain credentials"),
            ),
            (
                config("ftp://r.example", true, None),
                Some("`ftp` is not supported"),
            ),
            (
                config("https://r.example", false, Some(0)),
                Some("at least 1"),
            ),
        ];
        for (config, expected) in cases {
            let url = config.base_url.to_string();
            match (RegistryClient::new(config), expected) {
                (Ok(_), None) => {}
                (Err(e), Some(fragment)) => assert!(e.to_string().contains(fragment), "{url}: {e}"),
                (got, _) => panic!(
                    "{url}: unexpected {:?}",
                    got.map(|_| ()).map_err(|e| e.to_string())
                ),
            }
        }
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let credentials = Credentials::Static {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }
}
