//! A stand-in ext_proc server with no policy: it records what Envoy sends and lets everything
//! through, except requests whose path contains `/denied/`, which it refuses the way the sidecar
//! does (ImmediateResponse 403, OCI error JSON), and requests whose path contains `/hang/`, whose
//! body it never answers (to see Envoy's `message_timeout` at work). It checks the Envoy config's contract
//! (which requests reach the processor, in which phases, with how much body) independently of
//! the real sidecar.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeaderMutation, HeadersResponse, HttpHeaders, ImmediateResponse,
    ProcessingRequest, ProcessingResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request as Phase,
    processing_response::Response as Reply,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Status, Streaming};

use crate::serve::spawn_until_stopped;

/// The largest gRPC message the fake accepts. tonic's default (4 MiB) is below what Envoy's
/// manifest route buffers (5 MiB), so a 4 MiB manifest plus headers would fail as a transport
/// error (pitfall 16); the real sidecar must raise it too.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The body of the fake's refusals.
pub const FAKE_DENIAL_MESSAGE: &str = "fake ext_proc: paths containing /denied/ are refused";

/// What the processor saw of one HTTP request (one ext_proc stream).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenStream {
    pub method: String,
    /// `:path` as Envoy sent it (normalised, with the query).
    pub path: String,
    pub content_type: Option<String>,
    /// `end_of_stream` of the request headers (true for a request without body).
    pub headers_end_of_stream: bool,
    /// How many request-body messages arrived (BUFFERED: at most one).
    pub body_messages: usize,
    /// The request body, all messages concatenated.
    pub body: Vec<u8>,
    pub body_end_of_stream: bool,
    /// `:status` of the upstream response headers, if that phase arrived.
    pub response_status: Option<u16>,
    /// Whether the fake refused the request.
    pub denied: bool,
    /// Phases the configured processing mode should never send (trailers, response body).
    pub unexpected: Vec<String>,
    /// How the inbound stream ended: `None` while open, `Some(Ok(()))` for a clean half-close by
    /// Envoy, `Some(Err(status))` for a reset or error.
    pub ended: Option<Result<(), String>>,
}

/// A running fake processor on `127.0.0.1:<ephemeral>`; stops on drop.
pub struct FakeExtProc {
    addr: SocketAddr,
    streams: Arc<Mutex<Vec<SeenStream>>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeExtProc {
    /// Binds and serves `envoy.service.ext_proc.v3.ExternalProcessor` in the current runtime.
    pub async fn start() -> FakeExtProc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let streams = Arc::new(Mutex::new(Vec::new()));
        let service = ExternalProcessorServer::new(Recorder {
            streams: Arc::clone(&streams),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (shutdown, server) = spawn_until_stopped("fake ext_proc server", |stop| {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        });
        FakeExtProc {
            addr,
            streams,
            shutdown: Some(shutdown),
            server,
        }
    }

    /// Where Envoy's `registry-gateway` cluster should point.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every stream so far, in the order they started.
    pub fn streams(&self) -> Vec<SeenStream> {
        self.streams.lock().expect("not poisoned").clone()
    }
}

impl Drop for FakeExtProc {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.abort();
    }
}

struct Recorder {
    streams: Arc<Mutex<Vec<SeenStream>>>,
}

#[tonic::async_trait]
impl ExternalProcessor for Recorder {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: tonic::Request<Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let streams = Arc::clone(&self.streams);
        let index = {
            let mut all = streams.lock().expect("not poisoned");
            all.push(SeenStream::default());
            all.len() - 1
        };
        tokio::spawn(async move {
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    // Envoy closed its side (cleanly or not): the request is over.
                    Ok(None) => {
                        streams.lock().expect("not poisoned")[index].ended = Some(Ok(()));
                        return;
                    }
                    // Without `ext_proc_graceful_grpc_close` (envoy.yaml's runtime layer), Envoy
                    // 1.40 ends even a fully answered stream with an HTTP/2 reset; tonic then
                    // says `Internal: h2 protocol error: error reading a body from connection`.
                    Err(status) => {
                        streams.lock().expect("not poisoned")[index].ended =
                            Some(Err(format!("{:?}: {}", status.code(), status.message())));
                        return;
                    }
                };
                let reply = {
                    let mut all = streams.lock().expect("not poisoned");
                    record_and_answer(&mut all[index], message)
                };
                // A `/hang/` request: say nothing, keep reading until Envoy gives up.
                let Some(reply) = reply.transpose() else {
                    continue;
                };
                let last = matches!(reply, Err(_) | Ok(Reply::ImmediateResponse(_)));
                let item = reply.map(|response| ProcessingResponse {
                    response: Some(response),
                    ..ProcessingResponse::default()
                });
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// Records the message; the answer to send, `Ok(None)` for none (hang), or an error to end the
/// stream with.
fn record_and_answer(
    seen: &mut SeenStream,
    message: ProcessingRequest,
) -> Result<Option<Reply>, Status> {
    match message.request {
        Some(Phase::RequestHeaders(headers)) => {
            seen.method = header(&headers, ":method").unwrap_or_default();
            seen.path = header(&headers, ":path").unwrap_or_default();
            seen.content_type = header(&headers, "content-type");
            seen.headers_end_of_stream = headers.end_of_stream;
            if headers.end_of_stream && seen.path.contains("/denied/") {
                seen.denied = true;
                return Ok(Some(Reply::ImmediateResponse(denial())));
            }
            Ok(Some(Reply::RequestHeaders(HeadersResponse::default())))
        }
        Some(Phase::RequestBody(body)) => {
            seen.body_messages += 1;
            seen.body.extend_from_slice(&body.body);
            seen.body_end_of_stream = body.end_of_stream;
            if seen.path.contains("/hang/") {
                return Ok(None);
            }
            if body.end_of_stream && seen.path.contains("/denied/") {
                seen.denied = true;
                return Ok(Some(Reply::ImmediateResponse(denial())));
            }
            Ok(Some(Reply::RequestBody(BodyResponse::default())))
        }
        Some(Phase::ResponseHeaders(headers)) => {
            seen.response_status = header(&headers, ":status").and_then(|s| s.parse().ok());
            Ok(Some(Reply::ResponseHeaders(HeadersResponse::default())))
        }
        other => {
            let name = format!("{other:?}");
            seen.unexpected
                .push(name.chars().take(40).collect::<String>());
            Err(Status::failed_precondition(
                "fake ext_proc: phase not enabled by envoy/envoy.yaml",
            ))
        }
    }
}

/// Header values arrive in `raw_value`; `value` stays empty (protocol-facts 3.1).
fn header(headers: &HttpHeaders, name: &str) -> Option<String> {
    headers
        .headers
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.key == name)
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
}

/// 403 with the OCI error envelope; the content type goes in `raw_value` (a `value` would be
/// ignored by Envoy and the client would get no JSON content type).
fn denial() -> ImmediateResponse {
    let body = serde_json::json!({
        "errors": [{ "code": "DENIED", "message": FAKE_DENIAL_MESSAGE }]
    });
    ImmediateResponse {
        status: Some(HttpStatus { code: 403 }),
        headers: Some(HeaderMutation {
            set_headers: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: "content-type".to_owned(),
                    raw_value: b"application/json".to_vec(),
                    ..HeaderValue::default()
                }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..HeaderValueOption::default()
            }],
            ..HeaderMutation::default()
        }),
        body: serde_json::to_vec(&body).expect("JSON value serialises"),
        details: "fake_ext_proc_denied".to_owned(),
        ..ImmediateResponse::default()
    }
}
