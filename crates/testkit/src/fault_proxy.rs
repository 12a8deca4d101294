//! A fault-injecting HTTP proxy in front of a real registry: requests whose path matches a
//! rule get a fault (a canned status, a slow or cut answer, garbage, pages without end);
//! everything else is forwarded unchanged. For "the registry answers 500 for some
//! repositories" and the other misbehaviours a real registry cannot be made to show on demand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// What a matching request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// This status, with an OCI error body.
    Status(u16),
    /// The real answer, after this long.
    Slow(Duration),
    /// A 200 whose body breaks off: the connection is cut mid-answer.
    Cut,
    /// A 200 `application/json` that is not JSON.
    Garbage,
    /// A valid tag page with a `Link` to a next page, on every page: a list without end.
    EndlessPages,
}

/// The proxy; stopped when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

struct State {
    upstream: String,
    /// `(path prefix, fault)`: a request whose path starts with the prefix gets the fault.
    rules: Mutex<Vec<(String, Fault)>>,
    http: reqwest::Client,
    injected: AtomicUsize,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream` (`http://127.0.0.1:<port>`). Each
    /// rule `(prefix, status)` answers `status` with an OCI error body to every request whose
    /// path starts with `prefix`, e.g. `("/v2/team/app/tags/list", 500)`.
    pub async fn start(upstream: &str, rules: &[(&str, u16)]) -> FaultProxy {
        let rules: Vec<_> = rules.iter().map(|(p, s)| (*p, Fault::Status(*s))).collect();
        FaultProxy::start_with(upstream, &rules).await
    }

    /// Like [`FaultProxy::start`], with any [`Fault`].
    pub async fn start_with(upstream: &str, rules: &[(&str, Fault)]) -> FaultProxy {
        let faults = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            rules: Mutex::new(to_rules(rules)),
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

    /// Replaces the rules; `&[]` forwards everything from now on.
    pub fn set(&self, rules: &[(&str, Fault)]) {
        *self.faults.rules.lock().expect("rules lock") = to_rules(rules);
    }

    /// How many requests got a fault so far.
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

fn to_rules(rules: &[(&str, Fault)]) -> Vec<(String, Fault)> {
    rules
        .iter()
        .map(|(p, f)| ((*p).to_owned(), f.clone()))
        .collect()
}

async fn forward(
    state: &State,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = state
        .rules
        .lock()
        .expect("rules lock")
        .iter()
        .find(|(prefix, _)| uri.path().starts_with(prefix.as_str()))
        .map(|(_, fault)| fault.clone());
    if let Some(fault) = &fault {
        state.injected.fetch_add(1, Ordering::Relaxed);
        let json = [("content-type", "application/json")];
        match fault {
            Fault::Status(status) => {
                let status =
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let body = r#"{"errors":[{"code":"UNKNOWN","message":"injected by the test's fault proxy"}]}"#;
                return (status, json, body).into_response();
            }
            Fault::Slow(delay) => tokio::time::sleep(*delay).await,
            Fault::Cut => {
                let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                    Ok(Bytes::from_static(b"{\"name\":\"x\",\"tags\":[\"a\",")),
                    Err(std::io::Error::other("cut by the test's fault proxy")),
                ];
                let body = Body::from_stream(tokio_stream::iter(chunks));
                return (StatusCode::OK, json, body).into_response();
            }
            Fault::Garbage => {
                return (StatusCode::OK, json, "<html>not a tag list</html>").into_response();
            }
            Fault::EndlessPages => {
                let page = state.injected.load(Ordering::Relaxed);
                let name = uri
                    .path()
                    .trim_start_matches("/v2/")
                    .trim_end_matches("/tags/list");
                let body = format!(r#"{{"name":"{name}","tags":["page-{page}"]}}"#);
                let link = format!("</v2/{name}/tags/list?n=1&last=page-{page}>; rel=\"next\"");
                return (
                    StatusCode::OK,
                    [
                        ("content-type", "application/json".to_owned()),
                        ("link", link),
                    ],
                    body,
                )
                    .into_response();
            }
        }
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
