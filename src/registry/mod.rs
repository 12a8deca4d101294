//! Tag lists from the registry over HTTP: the [`TagSource`] that `app` plugs into the checker.
//!
//! One `list_tags` call reads every page of `GET /v2/<name>/tags/list` under one deadline, the
//! authentication round trips included. Authentication follows the registry's challenge: Basic
//! (htpasswd registries, Harbor robots) or the Docker token flow (distribution with token auth,
//! Harbor without an `Authorization` header). Credentials are never logged and never appear in an
//! error; a mounted Secret directory is re-read when it changes, so rotation needs no restart.
//!
//! This file holds the client and its paging; `auth` answers challenges and caches tokens,
//! `challenge` parses `WWW-Authenticate`, `credentials` holds and re-reads credentials,
//! `links` builds page URLs and follows `Link`, `http` is the shared transport plumbing and
//! `cursor` the lexer both header parsers use. `catalog` and `manifests` are the reads of
//! `audit` (catalog pages, manifests by tag or digest), with their errors in `read`.

mod auth;
mod catalog;
mod challenge;
mod credentials;
mod cursor;
mod http;
mod links;
mod manifests;
mod read;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use tracing::debug;

use self::auth::{Auth, TokenCache, with_auth};
use self::challenge::select_challenge;
use self::credentials::{CredentialStore, Snapshot};
use self::http::{http_client, origin_and_path, read_body, transport};
use self::links::{next_page, tag_list_url};
use crate::check::{TagError, TagSource};

pub use self::catalog::CatalogPage;
pub use self::manifests::{FetchedManifest, manifest_accept};
pub use self::read::ReadError;

/// A Link chain longer than this is a loop or an attack, not a repository.
const MAX_PAGES: usize = 10_000;
/// One page of 128-character tags at this size holds ~250,000 tags.
const MAX_PAGE_BYTES: usize = 32 << 20;
/// Requests per page: first try, then one answer to each challenge (a rejected cached token, a
/// fresh token, rotated credentials). Bounds a registry that challenges forever.
const MAX_SENDS_PER_PAGE: usize = 4;

/// Where tags are listed and how.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// The registry, or Harbor's external URL. `/v2/...` is appended to its path; it must be
    /// `http` or `https` and must not carry credentials.
    pub base_url: Url,
    pub credentials: Credentials,
    /// Deadline for one whole `list_tags` call: every page and every token fetch.
    pub timeout: Duration,
    /// Accept any TLS certificate, from the registry and the token realm.
    pub insecure: bool,
    /// Send the gateway's own credentials over plain `http`. Without it a plain-http registry
    /// works only anonymously: there is nothing to protect then.
    pub plain_http_credentials: bool,
    /// Token realms trusted besides the registry's own origin (scheme, host, port and path; any
    /// query is the registry's to add). The realm receives the gateway's password.
    pub token_realms: Vec<Url>,
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
    /// (`true`/`false`, OR-ed with [`RegistryConfig::insecure`]: accept any TLS certificate). Trailing line breaks are
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
    #[error(
        "registry URL {url} is plain http and the gateway has registry credentials, which would cross the network in clear text; use https, or pass --registry-plain-http-credentials to send them anyway"
    )]
    PlainHttpCredentials { url: Url },
    #[error("token realm {url} must be an http or https URL without credentials or query")]
    TokenRealm { url: Url },
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
    plain_http_credentials: bool,
    token_realms: Vec<Url>,
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
            .field("plain_http_credentials", &self.plain_http_credentials)
            .field("token_realms", &self.token_realms)
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
            plain_http_credentials,
            token_realms,
            page_size,
        } = config;
        for realm in &token_realms {
            if !matches!(realm.scheme(), "http" | "https")
                || !realm.username().is_empty()
                || realm.password().is_some()
                || realm.query().is_some()
            {
                return Err(Error::TokenRealm { url: realm.clone() });
            }
        }
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
        if base_url.scheme() == "http" && credentials.initial_has_basic() && !plain_http_credentials
        {
            return Err(Error::PlainHttpCredentials { url: base_url });
        }
        // Already installed (by us or by the embedding program) is fine: reqwest uses whichever
        // provider is the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self {
            base_url,
            timeout,
            page_size,
            insecure,
            plain_http_credentials,
            token_realms,
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
        self.send_get(repository, url, None, auth, credentials, |status| {
            debug!(
                repository,
                page,
                status = status.as_u16(),
                "registry tag list page"
            );
        })
        .await
    }

    /// One `GET url` for `repository` (the name a token's default scope names), answering
    /// authentication challenges exactly as a tag-list page does; `log` sees every status.
    /// Returns the first response that is not a 401. The catalog and manifest reads of
    /// `audit` go through here too, so they authenticate as `serve` does.
    async fn send_get(
        &self,
        repository: &str,
        url: &Url,
        accept: Option<&reqwest::header::HeaderValue>,
        auth: &mut Auth,
        credentials: &mut Arc<Snapshot>,
        log: impl Fn(StatusCode),
    ) -> Result<reqwest::Response, TagError> {
        for _ in 0..MAX_SENDS_PER_PAGE {
            let http = self.http(credentials, url)?;
            let mut request = with_auth(http.get(url.clone()), auth);
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept.clone());
            }
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            log(status);
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

    /// The client for a request to `url` made on behalf of `credentials`: plain http only
    /// when no credentials of the gateway's could go with it, or the operator allowed it.
    fn http(&self, credentials: &Snapshot, url: &Url) -> Result<&reqwest::Client, TagError> {
        if url.scheme() != "https" && credentials.basic.is_some() && !self.plain_http_credentials {
            // Reachable when a credentials directory gained a user name after start-up, or a
            // token realm is plain http.
            return Err(TagError::Transport(format!(
                "{} is plain http and the gateway's credentials would go with it in clear text (--registry-plain-http-credentials allows it)",
                origin_and_path(url)
            )));
        }
        Ok(self.client(credentials))
    }

    fn client(&self, credentials: &Snapshot) -> &reqwest::Client {
        if self.insecure || credentials.insecure {
            &self.unverified
        } else {
            &self.verified
        }
    }

    /// Whether the registry's token realm may receive the gateway's credentials: the
    /// registry's own origin, or one the operator listed.
    pub(super) fn trusts_realm(&self, realm: &Url) -> bool {
        realm.origin() == self.base_url.origin()
            || self
                .token_realms
                .iter()
                .any(|trusted| trusted.origin() == realm.origin() && trusted.path() == realm.path())
    }

    /// One `GET /v2/<name>/tags/list?n=1` carrying exactly the client's `Authorization`.
    async fn client_read(
        &self,
        repository: &str,
        authorization: Option<&str>,
    ) -> Result<bool, TagError> {
        let url = tag_list_url(&self.base_url, repository, Some(1))?;
        let credentials = self.credentials.current(false).await;
        // The client's own header goes to the registry it is pushing to, which Envoy forwards it
        // to anyway; no credential of the gateway's is sent.
        let mut request = self.client(&credentials).get(url);
        if let Some(value) = authorization {
            let mut value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                TagError::InvalidResponse("the client's Authorization is not a header value".into())
            })?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        debug!(
            repository,
            status = status.as_u16(),
            "registry client check"
        );
        let may = match status {
            // 404: the repository is new; authorization happens before the handler.
            s if s.is_success() || s == StatusCode::NOT_FOUND => true,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => false,
            s => {
                return Err(TagError::Status { status: s.as_u16() });
            }
        };
        // Read what is left so the connection can be reused; its content does not matter.
        let _ = read_body(response, MAX_PAGE_BYTES).await;
        Ok(may)
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

    /// A client header that is not a valid header value is one the registry would refuse.
    async fn client_may_read(
        &self,
        repository: &str,
        authorization: Option<&str>,
    ) -> Result<bool, TagError> {
        match tokio::time::timeout(self.timeout, self.client_read(repository, authorization)).await
        {
            Ok(Err(TagError::InvalidResponse(_))) if authorization.is_some() => Ok(false),
            Ok(result) => result,
            Err(_) => Err(TagError::Timeout(self.timeout)),
        }
    }
}

#[derive(serde::Deserialize)]
struct TagList {
    /// distribution answers `null` for a repository whose tags were all deleted.
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[cfg(test)]
mod tests;
