//! The Envoy ext_proc adapter: one gRPC stream per HTTP request.
//!
//! Envoy's route configuration sends only manifest writes here (`envoy/envoy.yaml`), with
//! `request_body_mode: BUFFERED` and `response_header_mode: SEND`. The stream sees:
//! request headers → (for a `PUT`) the whole body → the registry's response headers. We decide on
//! the body (a re-push's store call may start on the headers, `Checker::decide_early`), and
//! settle the tag bookkeeping on the response status. Every phase gets exactly one
//! answer; anything this adapter cannot make sense of ends the stream with an error status, which
//! Envoy turns into a 500 because `failure_mode_allow` is false: never a silent pass.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders, ImmediateResponse,
    ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::check::{Checker, Early, TagSource, Ticket, Transport};
use crate::metrics::Metrics;
use crate::policy::{MAX_MANIFEST_BYTES, ManifestWrite, WriteKind};
use crate::respond::{self, Rendered};

/// Body bytes kept before a request is refused as too large; above distribution's 4 MiB so that
/// the policy, not this buffer, produces the message.
const BODY_CAP: usize = MAX_MANIFEST_BYTES + 1024 * 1024;

/// `envoy.service.ext_proc.v3.ExternalProcessor`.
pub struct ExtProcService<S> {
    checker: Arc<Checker<S>>,
    metrics: Arc<Metrics>,
}

impl<S> ExtProcService<S> {
    /// Serves decisions from `checker`.
    pub fn new(checker: Arc<Checker<S>>, metrics: Arc<Metrics>) -> Self {
        Self { checker, metrics }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<S: TagSource> ExternalProcessor for ExtProcService<S> {
    type ProcessStream = ReplyStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let stream = StreamState {
            checker: self.checker.clone(),
            metrics: self.metrics.clone(),
            write: None,
            content_type: None,
            authorization: None,
            body: Vec::new(),
            early: None,
            ticket: None,
            warnings: Vec::new(),
            deferred: false,
            answered_response: false,
            saw_request_headers: false,
            buffered: false,
            skips_response: false,
        };
        tokio::spawn(stream.run(inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One HTTP request's conversation.
struct StreamState<S> {
    checker: Arc<Checker<S>>,
    metrics: Arc<Metrics>,
    write: Option<ManifestWrite>,
    content_type: Option<String>,
    /// The client's own credentials, to ask the registry whether it accepts them.
    authorization: Option<String>,
    body: Vec<u8>,
    /// The store's decision, started on the request line while Envoy gathers the body.
    early: Option<Early>,
    /// Held from an allowed `PUT` until the registry answers; dropping it releases the slots.
    ticket: Option<Ticket>,
    /// `Warning` header values for the registry's answer to an allowed push.
    warnings: Vec<String>,
    /// Let through unjudged because the registry refuses the client's credentials.
    deferred: bool,
    /// The registry's response headers were answered: nothing more is owed to this request.
    answered_response: bool,
    saw_request_headers: bool,
    /// Envoy said (in the stream's first message) that it sends request bodies whole
    /// (`BUFFERED`): a body not marked end-of-stream is then followed by trailers, not cut.
    buffered: bool,
    /// Envoy was asked not to send the registry's response headers: they settle nothing.
    skips_response: bool,
}

impl<S: TagSource> StreamState<S> {
    async fn run(
        mut self,
        mut inbound: Streaming<ProcessingRequest>,
        tx: mpsc::Sender<Result<ProcessingResponse, Status>>,
    ) {
        loop {
            let message = match inbound.message().await {
                Ok(Some(message)) => message,
                // Envoy closed the stream: the request is over, answered or not. An unsettled
                // ticket is dropped here and releases its reservations.
                Ok(None) => return,
                Err(status) => {
                    // Envoy resets the stream once the request is over rather than closing it, and a
                    // client that goes away cancels it: both are normal endings.
                    if self.answered_response || status.code() == tonic::Code::Cancelled {
                        tracing::debug!(code = ?status.code(), "ext_proc stream reset after the exchange");
                    } else {
                        tracing::warn!(code = ?status.code(), message = status.message(), "ext_proc stream failed");
                        Metrics::count(&self.metrics.stream_errors, "inbound");
                    }
                    return;
                }
            };
            let (reply, done) = match self.handle(message).await {
                Ok(step) => step,
                Err(status) => {
                    Metrics::count(&self.metrics.stream_errors, "protocol");
                    tracing::warn!(
                        message = status.message(),
                        "ext_proc protocol error; ending the stream"
                    );
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            if tx.send(Ok(reply)).await.is_err() {
                Metrics::count(&self.metrics.stream_errors, "outbound");
                return;
            }
            if done {
                return;
            }
        }
    }

    /// Answers one phase; `true` when the request was answered locally and the stream is done.
    async fn handle(
        &mut self,
        message: ProcessingRequest,
    ) -> Result<(ProcessingResponse, bool), Status> {
        if let Some(config) = &message.protocol_config {
            self.buffered = config.request_body_mode == BodySendMode::Buffered as i32;
        }
        let phase = message
            .request
            .ok_or_else(|| Status::invalid_argument("ProcessingRequest without a phase"))?;
        match phase {
            Phase::RequestHeaders(headers) => {
                self.saw_request_headers = true;
                let method = header(&headers, ":method").unwrap_or_default();
                let path = header(&headers, ":path").unwrap_or_default();
                if let Some(refused) =
                    self.checker
                        .check_harbor_api(Transport::ExtProc, &method, &path)
                {
                    let refusal = respond::render(&refused.outcome);
                    return Ok(match refusal {
                        Some(refusal) => (immediate(&refusal), true),
                        None => (continue_message(Message::RequestHeaders), false),
                    });
                }
                self.write = ManifestWrite::from_request(&method, &path);
                self.content_type = header(&headers, "content-type");
                self.authorization = header(&headers, "authorization");
                if let Some(write) = &self.write
                    && write.kind == WriteKind::Put
                    && headers.end_of_stream
                {
                    // A PUT without a body: no manifest to measure, so it is refused; an allow
                    // would still be answered in this phase's own type.
                    return Ok(match self.decide().await {
                        Some(refusal) => (immediate(&refusal), true),
                        None => (continue_message(Message::RequestHeaders), false),
                    });
                }
                if let Some(write) = &self.write {
                    self.early = self
                        .checker
                        .decide_early(write, self.authorization.as_deref());
                }
                let mut reply = continue_message(Message::RequestHeaders);
                if let Some(write) = &self.write
                    && !self.checker.needs_registry_answer(write)
                {
                    // Honoured only by an Envoy that allows exactly this mode
                    // (`allowed_override_modes` in envoy/envoy.yaml); another one sends the
                    // response headers anyway, and they are handled as always.
                    reply.mode_override = Some(skip_response_headers());
                    self.skips_response = true;
                }
                Ok((reply, false))
            }
            Phase::RequestBody(body) => {
                if !self.saw_request_headers {
                    // Without the headers we cannot tell a manifest write from anything else;
                    // continuing would let every manifest through unchecked.
                    return Err(Status::failed_precondition(
                        "request body before request headers: Envoy must send request headers (processing_mode.request_header_mode: SEND)",
                    ));
                }
                let Some(write) = &self.write else {
                    return Ok((continue_message(Message::RequestBody), false));
                };
                if write.kind != WriteKind::Put {
                    return Ok((continue_message(Message::RequestBody), false));
                }
                let cut = if self.body.len() + body.body.len() > BODY_CAP {
                    Some(false)
                } else {
                    self.body.extend_from_slice(&body.body);
                    // Only BUFFERED delivery is configured, and over its buffer limit Envoy
                    // answers 413 itself: a body without end-of-stream is whole, with trailers to
                    // come. Without that word from Envoy it may have been cut, and an unseen
                    // manifest is never allowed.
                    (!body.end_of_stream && !self.buffered).then_some(true)
                };
                if let Some(cut_by_envoy) = cut {
                    let refusal = respond::not_whole(write, cut_by_envoy);
                    return Ok((immediate(&refusal), true));
                }
                Ok(match self.decide().await {
                    Some(refusal) => (immediate(&refusal), true),
                    None => {
                        // Envoy ends the stream after this reply when it skips the response.
                        self.answered_response |= self.skips_response;
                        (continue_message(Message::RequestBody), false)
                    }
                })
            }
            Phase::ResponseHeaders(headers) => {
                let status = header(&headers, ":status")
                    .and_then(|s| s.parse::<u16>().ok())
                    .unwrap_or(0);
                if let Some(ticket) = self.ticket.take() {
                    ticket.settle(status, &header_values(&headers, "oci-tag"));
                }
                if self.deferred
                    && let Some(write) = &self.write
                {
                    self.checker.observe_deferred(write, status);
                }
                if let Some(write) = &self.write
                    && write.kind == WriteKind::Delete
                {
                    self.checker.observe_delete(write, status);
                }
                self.answered_response = true;
                // Warnings speak of a push that was stored: a refused one gets the registry's
                // own answer alone.
                let warnings = std::mem::take(&mut self.warnings);
                if (200..300).contains(&status) && !warnings.is_empty() {
                    return Ok((warn_response(&warnings), false));
                }
                Ok((continue_message(Message::ResponseHeaders), false))
            }
            Phase::ResponseBody(_) => Ok((continue_message(Message::ResponseBody), false)),
            Phase::RequestTrailers(_) => Ok((continue_message(Message::RequestTrailers), false)),
            Phase::ResponseTrailers(_) => Ok((continue_message(Message::ResponseTrailers), false)),
        }
    }

    /// Decides the buffered manifest; `None` allows it (and keeps the ticket), `Some` refuses.
    async fn decide(&mut self) -> Option<Rendered> {
        let write = self.write.as_ref()?;
        let body = std::mem::take(&mut self.body);
        let checked = self
            .checker
            .check_push(
                Transport::ExtProc,
                write,
                self.content_type.as_deref(),
                &body,
                self.authorization.as_deref(),
                self.early.take(),
            )
            .await;
        let refusal = respond::render(&checked.outcome);
        if refusal.is_none() {
            self.ticket = checked.ticket;
            self.warnings = crate::policy::warning_headers(&checked.warnings);
            self.deferred = checked.outcome == crate::check::Outcome::Defer;
        }
        refusal
    }
}

/// A header's value: Envoy sends values in `raw_value`; `value` is read for older senders.
fn header(headers: &HttpHeaders, name: &str) -> Option<String> {
    header_values(headers, name).into_iter().next()
}

fn header_values(headers: &HttpHeaders, name: &str) -> Vec<String> {
    let Some(HeaderMap { headers, .. }) = &headers.headers else {
        return Vec::new();
    };
    headers
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
        .collect()
}

/// `reply` as the whole answer to a message.
fn respond_with(reply: Reply) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(reply),
        ..Default::default()
    }
}

/// A header to set: the value goes in `raw_value`, as for every ext_proc mutation.
fn set_header(key: &str, value: Vec<u8>, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            raw_value: value,
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

/// The message an answer lets through unchanged.
#[derive(Clone, Copy)]
enum Message {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

/// The shipped processing mode (envoy/envoy.yaml) without the response-headers phase. An
/// override replaces the whole mode, so every field is spelled out: an unset
/// `request_body_mode` would be `NONE`, and the manifest would go unmeasured. Public so that the
/// benchmark's mode_override probe sends exactly the override the sidecar sends.
pub fn skip_response_headers() -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: HeaderSendMode::Skip as i32,
        request_body_mode: BodySendMode::Buffered as i32,
        response_body_mode: BodySendMode::None as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

/// Lets `message` through unchanged.
fn continue_message(message: Message) -> ProcessingResponse {
    respond_with(match message {
        Message::RequestHeaders => Reply::RequestHeaders(HeadersResponse::default()),
        Message::RequestBody => Reply::RequestBody(BodyResponse::default()),
        Message::RequestTrailers => Reply::RequestTrailers(TrailersResponse::default()),
        Message::ResponseHeaders => Reply::ResponseHeaders(HeadersResponse::default()),
        Message::ResponseBody => Reply::ResponseBody(BodyResponse::default()),
        Message::ResponseTrailers => Reply::ResponseTrailers(TrailersResponse::default()),
    })
}

/// The registry's response headers, with the push's `Warning` headers added beside any the
/// registry sent. Values in `raw_value`, as for every ext_proc mutation.
fn warn_response(values: &[String]) -> ProcessingResponse {
    let set_headers = values
        .iter()
        .map(|value| {
            let value = value.clone().into_bytes();
            set_header("warning", value, HeaderAppendAction::AppendIfExistsOrAdd)
        })
        .collect();
    respond_with(Reply::ResponseHeaders(HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers,
                ..Default::default()
            }),
            ..Default::default()
        }),
    }))
}

/// A local reply. Header values go in `raw_value`: Envoy ignores `value` in ext_proc mutations,
/// and a client without `content-type: application/json` would not parse the OCI error.
fn immediate(rendered: &Rendered) -> ProcessingResponse {
    let content_type = set_header(
        "content-type",
        b"application/json".to_vec(),
        HeaderAppendAction::OverwriteIfExistsOrAdd,
    );
    respond_with(Reply::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(rendered.http_status),
        }),
        headers: Some(HeaderMutation {
            set_headers: vec![content_type],
            ..Default::default()
        }),
        body: rendered.body.clone(),
        details: format!("registry_gateway_{}", rendered.details),
        ..Default::default()
    }))
}
