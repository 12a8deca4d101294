//! A small Docker-token issuer, playing the part of Harbor's `/service/token` (or any registry's
//! auth server) for distribution's `auth.token`: `GET /token?service=..&scope=..` with HTTP Basic
//! credentials answers `{"token", "access_token", "expires_in"}`, an RS256 JWT the registry
//! accepts. Keys, certificate and signatures come from the `openssl` command line (no extra
//! crates); the certificate travels in the JWT's `x5c` header and is the registry's
//! `rootcertbundle`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tempfile::TempDir;
use tokio::sync::oneshot;

use crate::TokenAuthConfig;
use crate::serve::spawn_until_stopped;

/// The `service` (JWT audience) the issuer and the registry agree on.
pub const TOKEN_SERVICE: &str = "registry-gateway-tests";
/// The JWT issuer the registry trusts.
pub const TOKEN_ISSUER: &str = "registry-gateway-test-issuer";

/// One call to the token endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    pub service: Option<String>,
    /// Every `scope` parameter, as sent.
    pub scopes: Vec<String>,
    /// The Basic user name, if credentials were sent.
    pub user: Option<String>,
    /// The HTTP status the issuer answered.
    pub status: u16,
}

/// A running token issuer on `127.0.0.1:<ephemeral>`; stops on drop.
///
/// The one user it knows gets every action it asks for; anonymous requests get a token with no
/// access (the registry then answers 401 again); wrong credentials get 401. The user's password
/// can be changed while it runs ([`TokenIssuer::set_password`]).
pub struct TokenIssuer {
    addr: SocketAddr,
    state: Arc<IssuerState>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

struct IssuerState {
    user: String,
    password: Mutex<String>,
    key: PathBuf,
    cert: PathBuf,
    cert_der_base64: String,
    token_ttl: Duration,
    requests: Mutex<Vec<TokenRequest>>,
}

impl TokenIssuer {
    /// Generates a throw-away RSA key and self-signed certificate and serves `GET /token`.
    /// Tokens live `token_ttl` (`expires_in`).
    pub async fn start(user: &str, password: &str, token_ttl: Duration) -> TokenIssuer {
        let dir = crate::process::temp_dir("rg-token-");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={TOKEN_ISSUER}"),
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ]);
        let der = openssl(&[
            "x509",
            "-in",
            &cert.display().to_string(),
            "-outform",
            "DER",
        ]);
        let state = Arc::new(IssuerState {
            user: user.to_owned(),
            password: Mutex::new(password.to_owned()),
            key,
            cert,
            cert_der_base64: base64(&der, STANDARD),
            token_ttl,
            requests: Mutex::new(Vec::new()),
        });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let handler_state = Arc::clone(&state);
        let app = axum::Router::new().route(
            "/token",
            axum::routing::get(move |uri: Uri, headers: HeaderMap| {
                let state = Arc::clone(&handler_state);
                async move { issue(&state, &uri, &headers).await }
            }),
        );
        let (shutdown, server) = spawn_until_stopped("token issuer", |stop| {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .into_future()
        });
        TokenIssuer {
            addr,
            state,
            shutdown: Some(shutdown),
            server,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port>/token`: the `realm` of the registry's challenge.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The registry side: `RegistryOptions { token_auth: Some(issuer.auth_config()), .. }`.
    pub fn auth_config(&self) -> TokenAuthConfig {
        TokenAuthConfig {
            realm: self.realm(),
            service: TOKEN_SERVICE.to_owned(),
            issuer: TOKEN_ISSUER.to_owned(),
            root_cert_bundle: self.state.cert.clone(),
        }
    }

    /// The issuer's certificate (PEM), which the registry trusts.
    pub fn cert_path(&self) -> &Path {
        &self.state.cert
    }

    /// Mints a token directly, e.g. for a raw test client:
    /// `issuer.token(&[("team/app", &["pull", "push"])])`.
    pub fn token(&self, access: &[(&str, &[&str])]) -> String {
        let access: Vec<(String, Vec<String>)> = access
            .iter()
            .map(|(name, actions)| {
                (
                    (*name).to_owned(),
                    actions.iter().map(|a| (*a).to_owned()).collect(),
                )
            })
            .collect();
        sign_token(&self.state, &self.state.user, &access)
    }

    /// Changes the user's password, as refreshing a Harbor robot account's secret does: from now
    /// on the old one gets `401`. Tokens already issued stay valid until they expire: a JWT
    /// cannot be called back, and the registry checks only its signature and claims.
    pub fn set_password(&self, password: &str) {
        *self.state.password.lock().expect("not poisoned") = password.to_owned();
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().expect("not poisoned").clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}

async fn issue(state: &Arc<IssuerState>, uri: &Uri, headers: &HeaderMap) -> Response {
    let mut service = None;
    let mut scopes = Vec::new();
    for pair in uri.query().unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "service" => service = Some(value),
            "scope" => scopes.push(value),
            _ => {}
        }
    }
    let credentials = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64_decode(b64.trim()))
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(u, p)| (u.to_owned(), p.to_owned()))
        });
    let mut record = TokenRequest {
        service: service.clone(),
        scopes: scopes.clone(),
        user: credentials.as_ref().map(|(u, _)| u.clone()),
        status: 200,
    };

    let known = credentials.as_ref().is_some_and(|(user, password)| {
        *user == state.user && *password == *state.password.lock().expect("not poisoned")
    });
    let granted: Vec<(String, Vec<String>)> = match &credentials {
        Some(_) if known => scopes
            .iter()
            .filter_map(|scope| {
                // `repository:<name>:<actions>`; names contain `/` but never `:`.
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                (kind == "repository").then(|| {
                    (
                        name.to_owned(),
                        actions.split(',').map(str::to_owned).collect(),
                    )
                })
            })
            .collect(),
        Some(_) => {
            record.status = 401;
            state.requests.lock().expect("not poisoned").push(record);
            return (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Basic realm=\"token\"")],
                "bad credentials",
            )
                .into_response();
        }
        None => Vec::new(),
    };
    if service.as_deref() != Some(TOKEN_SERVICE) {
        record.status = 400;
        state.requests.lock().expect("not poisoned").push(record);
        return (StatusCode::BAD_REQUEST, "unknown service").into_response();
    }
    let subject = credentials.map(|(u, _)| u).unwrap_or_default();
    let signing_state = Arc::clone(state);
    let token = tokio::task::spawn_blocking(move || sign_token(&signing_state, &subject, &granted))
        .await
        .expect("signing does not panic");
    state.requests.lock().expect("not poisoned").push(record);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": state.token_ttl.as_secs(),
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An RS256 JWT as distribution 2.8 verifies it: `x5c` chain to the root bundle, `iss`, `aud`
/// (a string in 2.8), `exp`/`nbf`, and `access` covering the requested scope.
fn sign_token(state: &IssuerState, subject: &str, access: &[(String, Vec<String>)]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [state.cert_der_base64],
    });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": subject,
        "aud": TOKEN_SERVICE,
        "exp": now + state.token_ttl.as_secs(),
        "nbf": now.saturating_sub(5),
        "iat": now,
        "jti": format!("{now}-{}", std::process::id()),
        "access": access.iter().map(|(name, actions)| serde_json::json!({
            "type": "repository",
            "name": name,
            "actions": actions,
        })).collect::<Vec<_>>(),
    });
    let signing_input = format!(
        "{}.{}",
        base64(header.to_string().as_bytes(), URL_SAFE),
        base64(claims.to_string().as_bytes(), URL_SAFE)
    );
    let signature = openssl_stdin(
        &["dgst", "-sha256", "-sign", &state.key.display().to_string()],
        signing_input.as_bytes(),
    );
    format!("{signing_input}.{}", base64(&signature, URL_SAFE))
}

/// The `Authorization` value HTTP Basic sends for `user` and `password`
/// (`Basic base64(user:password)`), e.g. to check that it never reaches a log.
pub fn basic_authorization(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64(format!("{user}:{password}").as_bytes(), STANDARD)
    )
}

fn openssl(args: &[&str]) -> Vec<u8> {
    openssl_stdin(args, &[])
}

fn openssl_stdin(args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("running openssl failed ({e}); run scripts/setup (it installs openssl)")
        });
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .expect("openssl reads its input");
    let output = child.wait_with_output().expect("openssl finishes");
    assert!(
        output.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 with `alphabet`; padded for [`STANDARD`], unpadded for [`URL_SAFE`] (as JWTs want).
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let pad = alphabet == STANDARD;
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let symbols = chunk.len() + 1;
        for i in 0..4 {
            if i < symbols {
                out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (padding optional); `None` if malformed.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = STANDARD.iter().position(|&a| a == c)?;
        bits = (bits << 6) | value as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
