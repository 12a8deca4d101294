//! Raw OCI distribution API calls, for edge cases no real client produces.

use std::sync::Once;
use std::time::Duration;

use reqwest::header::HeaderMap;
use sha2::{Digest, Sha256};

use crate::{Conn, Layout};

/// Every manifest media type the tests push, for `Accept` on manifest GETs.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v1+prettyjws, \
     application/vnd.docker.distribution.manifest.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A complete HTTP answer: status, headers and the whole body.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Panics with the body unless the answer is `status` and its body holds `needle`.
    pub fn assert_answer(&self, status: u16, needle: &str) {
        let text = self.text();
        assert_eq!(self.status, status, "{text}");
        assert!(text.contains(needle), "expected {needle:?} in: {text}");
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "expected a JSON body ({e}), status {}: {}",
                self.status,
                self.text()
            )
        })
    }

    /// A header value, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A raw registry API client for one base URL (a registry, or Envoy in front of it). Redirects
/// are not followed and nothing is retried: tests see exactly what the server answered.
/// Transport errors panic with the URL (use [`RegistryClient::send`] to see them as values).
#[derive(Clone, Debug)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    basic: Option<(String, String)>,
    bearer: Option<String>,
}

impl RegistryClient {
    /// A client for `base`, e.g. `http://127.0.0.1:5000` (no trailing slash needed).
    pub fn new(base: &str) -> RegistryClient {
        RegistryClient {
            base: base.trim_end_matches('/').to_owned(),
            http: http_client(),
            basic: None,
            bearer: None,
        }
    }

    /// Sends HTTP Basic credentials on every request.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> RegistryClient {
        self.basic = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Sends `Authorization: Bearer <token>` on every request.
    pub fn with_bearer(mut self, token: &str) -> RegistryClient {
        self.bearer = Some(token.to_owned());
        self
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends one request. `target` is a path (`/v2/...`, appended to the base) or an absolute URL
    /// (e.g. an upload `Location`). Transport errors are returned.
    pub async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<HttpReply, reqwest::Error> {
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            target.to_owned()
        } else {
            format!("{}{}", self.base, target)
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid HTTP method");
        let mut request = self.http.request(method, url);
        if let Some((user, password)) = &self.basic {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok(HttpReply {
            status,
            headers,
            body,
        })
    }

    /// Like [`RegistryClient::send`], panicking on a transport error with method and target.
    pub async fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> HttpReply {
        self.send(method, target, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {}{target} failed: {e:?}", self.base))
    }

    /// `GET <target>`; transport errors are returned (used for readiness polling).
    pub async fn get(&self, target: &str) -> Result<HttpReply, reqwest::Error> {
        self.send("GET", target, &[], None).await
    }

    /// Uploads `data` as a blob of repository `name` the monolithic way (`POST
    /// /v2/<name>/blobs/uploads/`, then `PUT <Location>&digest=<digest>` with the bytes) and
    /// returns the final reply (`201 Created` on success; a failed POST's reply otherwise).
    pub async fn try_upload_blob(&self, name: &str, data: &[u8]) -> HttpReply {
        let started = self
            .request("POST", &format!("/v2/{name}/blobs/uploads/"), &[], None)
            .await;
        if started.status != 202 {
            return started;
        }
        let location = started
            .header("location")
            .unwrap_or_else(|| panic!("upload POST answered 202 without Location: {started:?}"));
        let separator = if location.contains('?') { '&' } else { '?' };
        let target = format!("{location}{separator}digest={}", sha256_digest(data));
        let target = if target.starts_with('/') || target.starts_with("http") {
            target
        } else {
            format!("/{target}")
        };
        self.request(
            "PUT",
            &target,
            &[("content-type", "application/octet-stream")],
            Some(data.to_vec()),
        )
        .await
    }

    /// [`RegistryClient::try_upload_blob`] that must succeed; returns the blob's digest.
    pub async fn upload_blob(&self, name: &str, data: &[u8]) -> String {
        let reply = self.try_upload_blob(name, data).await;
        assert_eq!(
            reply.status,
            201,
            "blob upload to {}/v2/{name} failed: {}",
            self.base,
            reply.text()
        );
        sha256_digest(data)
    }

    /// `PUT /v2/<name>/manifests/<reference>` with this content type and body, as is.
    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        content_type: &str,
        body: &[u8],
    ) -> HttpReply {
        let headers = [("content-type", content_type)];
        self.manifest_request("PUT", name, reference, &headers, Some(body.to_vec()))
            .await
    }

    /// `GET /v2/<name>/manifests/<reference>`, accepting every manifest media type.
    pub async fn get_manifest(&self, name: &str, reference: &str) -> HttpReply {
        let headers = [("accept", MANIFEST_ACCEPT)];
        self.manifest_request("GET", name, reference, &headers, None)
            .await
    }

    /// `HEAD /v2/<name>/manifests/<reference>`, accepting every manifest media type
    /// (distribution 2.8 answers 404 to a GET or HEAD of an OCI manifest whose `Accept` lacks the
    /// OCI type).
    pub async fn head_manifest(&self, name: &str, reference: &str) -> HttpReply {
        let headers = [("accept", MANIFEST_ACCEPT)];
        self.manifest_request("HEAD", name, reference, &headers, None)
            .await
    }

    /// `DELETE /v2/<name>/manifests/<reference>` (distribution 2.8 deletes by digest only).
    pub async fn delete_manifest(&self, name: &str, reference: &str) -> HttpReply {
        self.manifest_request("DELETE", name, reference, &[], None)
            .await
    }

    /// `<method> /v2/<name>/manifests/<reference>`.
    async fn manifest_request(
        &self,
        method: &str,
        name: &str,
        reference: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> HttpReply {
        let target = format!("/v2/{name}/manifests/{reference}");
        self.request(method, &target, headers, body).await
    }

    /// `GET /v2/<name>/tags/list`, raw.
    pub async fn tags_reply(&self, name: &str) -> HttpReply {
        self.request("GET", &format!("/v2/{name}/tags/list"), &[], None)
            .await
    }

    /// The repository's tags (sorted as the registry returns them); a `404` (unknown repository)
    /// is an empty list, anything else but `200` panics.
    pub async fn list_tags(&self, name: &str) -> Vec<String> {
        let reply = self.tags_reply(name).await;
        match reply.status {
            404 => Vec::new(),
            200 => reply.json()["tags"]
                .as_array()
                .map(|tags| {
                    tags.iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            other => panic!("tag list of {name}: HTTP {other}: {}", reply.text()),
        }
    }

    /// Uploads every blob (configs and layers) of the layout's images into repository `name`;
    /// each upload must succeed.
    pub async fn upload_layout_blobs(&self, name: &str, layout: &Layout) {
        for image in &layout.images {
            for blob in std::iter::once(&image.config).chain(&image.layers) {
                let bytes = layout.read_blob(&blob.digest);
                self.upload_blob(name, &bytes).await;
            }
        }
    }

    /// Pushes a whole layout the way clients do: every blob, then each child manifest by digest
    /// (for an index), then the top manifest to `reference`. Blob uploads must succeed; the
    /// first manifest PUT that is not `201` is returned, else the top manifest's reply.
    pub async fn push_layout(&self, name: &str, reference: &str, layout: &Layout) -> HttpReply {
        self.upload_layout_blobs(name, layout).await;
        if layout.is_index() {
            for image in &layout.images {
                let reply = self
                    .put_manifest(name, &image.digest, &image.media_type, &image.manifest)
                    .await;
                if reply.status != 201 {
                    return reply;
                }
            }
        }
        self.put_manifest(name, reference, &layout.media_type, &layout.manifest)
            .await
    }
}

/// One client per [`RegistryClient`]: no proxy (CI machines may set one), no redirects, a
/// generous overall deadline so a hung server fails the test instead of blocking it.
fn http_client() -> reqwest::Client {
    static PROVIDER: Once = Once::new();
    // reqwest is built with `rustls-no-provider`; a process-wide provider must exist before a
    // client is built, even for plain http.
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client with a crypto provider installed")
}

/// Sends `method target` as raw HTTP/1.1 bytes over a fresh TCP connection (`Connection: close`)
/// and returns the parsed answer. For spellings no URL library would send unchanged: dot
/// segments, `%2e`, lower-case methods, doubled slashes. Bounded by a 10 s socket timeout.
pub async fn raw_http(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let what = format!("{method} {target} to {addr}");
    let method = method.to_owned();
    let body = body.to_vec();
    // The answer is read as far as its framing announces rather than until EOF: after a local
    // reply Envoy keeps the socket open for its delayed-close timeout (1 s).
    let reply = tokio::task::spawn_blocking(move || {
        Conn::new(addr)
            .with_io_timeout(Duration::from_secs(10))
            .send_raw(&method, head.as_bytes(), &body)
    })
    .await
    .expect("raw HTTP task does not panic")
    .unwrap_or_else(|e| panic!("raw HTTP {what} failed: {e}"));
    let mut headers = HeaderMap::new();
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    HttpReply {
        status: reply.status,
        headers,
        body: reply.body,
    }
}
