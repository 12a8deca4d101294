//! A fault-injecting HTTP proxy in front of a real registry: requests whose path matches a
//! rule get a canned status; everything else is forwarded unchanged. For "the registry answers
//! 500 for some repositories", which a real registry cannot be made to do on demand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

/// Hop-by-hop headers (RFC 9110 7.6.1) and the ones the proxy's own framing sets.
const NOT_FORWARDED: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "content-length",
];

/// The proxy; stopped when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

struct State {
    upstream: String,
    /// `(path prefix, status)`: a request whose path starts with the prefix gets the status.
    rules: Vec<(String, u16)>,
    http: reqwest::Client,
    injected: AtomicUsize,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream` (`http://127.0.0.1:<port>`). Each
    /// rule `(prefix, status)` answers `status` with an OCI error body to every request whose
    /// path starts with `prefix`, e.g. `("/v2/team/app/tags/list", 500)`.
    pub async fn start(upstream: &str, rules: &[(&str, u16)]) -> FaultProxy {
        let faults = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            rules: rules.iter().map(|(p, s)| ((*p).to_owned(), *s)).collect(),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("reqwest client"),
            injected: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let state = faults.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { forward(&state, method, uri, headers, body).await }
            },
        );
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(err) = served {
                eprintln!("fault proxy failed: {err}");
            }
        });
        FaultProxy {
            addr,
            faults,
            shutdown: Some(shutdown),
            server,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests got a canned status so far.
    pub fn injected(&self) -> usize {
        self.faults.injected.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}

async fn forward(
    state: &State,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some((_, status)) = state
        .rules
        .iter()
        .find(|(prefix, _)| uri.path().starts_with(prefix.as_str()))
    {
        state.injected.fetch_add(1, Ordering::Relaxed);
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            r#"{"errors":[{"code":"UNKNOWN","message":"injected by the test's fault proxy"}]}"#;
        return (status, [("content-type", "application/json")], body).into_response();
    }
    let target = format!(
        "{}{}",
        state.upstream,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = state.http.request(method, target).body(body);
    for (name, value) in &headers {
        if name != "host" && !NOT_FORWARDED.contains(&name.as_str()) {
            request = request.header(name, value);
        }
    }
    let reply = match request.send().await {
        Ok(reply) => reply,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response(),
    };
    let status = reply.status();
    let mut out_headers = HeaderMap::new();
    for (name, value) in reply.headers() {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            out_headers.append(name, value.clone());
        }
    }
    let bytes = reply.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    response
}
