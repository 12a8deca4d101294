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

use super::RegistryClient;
use super::challenge::Challenge;
use super::credentials::{Basic, Snapshot};
use super::http::{origin_and_path, read_body, transport};
use crate::check::TagError;

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

#[derive(Default)]
pub(super) struct TokenCache {
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

    pub(super) fn remember(&mut self, repository: &str, key: &TokenKey) {
        if self.tokens.contains_key(key) && self.repositories.get(repository) != Some(key) {
            self.repositories.insert(repository.to_owned(), key.clone());
        }
    }

    fn forget(&mut self, key: &TokenKey) {
        self.tokens.remove(key);
    }
}
