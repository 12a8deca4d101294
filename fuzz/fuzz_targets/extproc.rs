//! ext_proc streams of any order and content against the sidecar's stream state machine
//! (`registry_gateway::extproc::ExtProcService`, its public API), with an in-memory tag source
//! in place of the registry and no network: the messages are framed as gRPC frames in one
//! request body, optionally followed by bytes that are not a frame, and the replies are read to
//! the end of the stream.
//!
//! Besides not panicking, a stream keeps the adapter's promises: every reply carries a
//! response, an immediate response is the last reply, and no phase gets two answers.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use registry_gateway::check::{CheckOptions, Checker, TagError, TagSource};
use registry_gateway::extproc::ExtProcService;
use registry_gateway::metrics::Metrics;
use registry_gateway::policy::{ConfigSource, compile};
use registry_gateway::snapshot::Snapshot;
use tokio_stream::StreamExt;

const CONFIG: &str = "max_image_size: 10KB
tag_count_limit: 3
rules:
  - path: ^small/
    limit: {max_image_size: 1KB, tag_count_limit: 1}
  - path: ^free/
    limit: {max_image_size: 1GB, tag_count_limit: 1000}
";

/// Answers from the repository's and the client's names, so a crash replays exactly.
struct FuzzRegistry;

impl TagSource for FuzzRegistry {
    async fn list_tags(&self, repository: &str) -> Result<Vec<String>, TagError> {
        match repository.as_bytes().first() {
            Some(b'e') => Err(TagError::Status { status: 502 }),
            Some(b'u') => Err(TagError::Unauthorized { status: 401 }),
            Some(b'w') => {
                // Longer than the decision deadline: the timeout path.
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(Vec::new())
            }
            _ => Ok((0..repository.len() % 5).map(|i| format!("t{i}")).collect()),
        }
    }

    async fn client_may_read(
        &self,
        _repository: &str,
        authorization: Option<&str>,
    ) -> Result<bool, TagError> {
        match authorization {
            Some(a) if a.contains("bad") => Ok(false),
            Some(a) if a.contains("err") => Err(TagError::Status { status: 503 }),
            _ => Ok(true),
        }
    }
}

/// Compiled once: regexes take longer to build than a stream takes to run. The books, the
/// state a stream leaves behind, are new for every input.
fn shared() -> &'static (Arc<Snapshot>, Arc<Metrics>) {
    static SHARED: OnceLock<(Arc<Snapshot>, Arc<Metrics>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let policy = compile(&ConfigSource::File {
            name: "fuzz.yaml".into(),
            text: CONFIG.into(),
        })
        .expect("the fuzz configuration is valid");
        let snapshot = Snapshot {
            policy,
            version: 1,
            hash: String::new(),
            loaded_at: SystemTime::UNIX_EPOCH,
        };
        (Arc::new(snapshot), Arc::new(Metrics::new()))
    })
}

const KEYS: &[&str] = &[
    ":method",
    ":path",
    ":status",
    "content-type",
    "authorization",
    "oci-tag",
    "content-length",
    ":authority",
];
const METHODS: &[&str] = &["PUT", "DELETE", "GET", "POST", "PATCH", "HEAD", "put"];
const NAMES: &[&str] = &[
    "app",
    "small/app",
    "free/app",
    "error/app",
    "unauthorized/app",
    "wait/app",
    "a/b/c",
    "UPPER",
    "",
];
const REFERENCES: &[&str] = &[
    "v1",
    "t0",
    "t1",
    "latest",
    "sha256:5d5e1c3a62a44b839a556f1f3c2b9e105d5e1c3a62a44b839a556f1f3c2b9e10",
    "sha256%3A5d5e1c3a62a44b839a556f1f3c2b9e105d5e1c3a62a44b839a556f1f3c2b9e10",
    "-bad",
];
const MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "Application/VND.OCI.Image.Manifest.v1+JSON; charset=utf-8",
];
const STATUSES: &[&str] = &["201", "202", "400", "401", "404", "500", "503", "", "x"];

fn pick(u: &mut Unstructured<'_>, choices: &[&str]) -> Result<String> {
    // Mostly a known value, sometimes anything.
    if u.ratio(7, 8)? {
        Ok((*u.choose(choices)?).to_owned())
    } else {
        u.arbitrary()
    }
}

fn header_value(u: &mut Unstructured<'_>, key: &str) -> Result<String> {
    Ok(match key {
        ":method" => pick(u, METHODS)?,
        ":path" => {
            let name = pick(u, NAMES)?;
            let reference = pick(u, REFERENCES)?;
            let query = match u.int_in_range(0..=3)? {
                0 => String::new(),
                1 => format!("?tag={}", pick(u, REFERENCES)?),
                2 => format!("?tag={}&tag={}", pick(u, REFERENCES)?, pick(u, REFERENCES)?),
                _ => format!("?{}", u.arbitrary::<String>()?),
            };
            if u.ratio(1, 10)? {
                // Harbor's API and anything else.
                format!("/api/v2.0/projects/p/repositories/{name}/artifacts{query}")
            } else {
                format!("/v2/{name}/manifests/{reference}{query}")
            }
        }
        ":status" => pick(u, STATUSES)?,
        "content-type" => pick(u, MEDIA_TYPES)?,
        "authorization" => pick(u, &["Basic dTpw", "Bearer bad", "Bearer err", ""])?,
        "oci-tag" => pick(u, REFERENCES)?,
        _ => u.arbitrary()?,
    })
}

fn headers(u: &mut Unstructured<'_>) -> Result<HttpHeaders> {
    let mut list = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        let key = pick(u, KEYS)?;
        let value = header_value(u, &key)?;
        // Envoy fills `raw_value`; older senders `value`.
        let (value, raw_value) = if u.ratio(1, 8)? {
            (value, Vec::new())
        } else {
            (String::new(), value.into_bytes())
        };
        list.push(HeaderValue {
            key,
            value,
            raw_value,
        });
    }
    Ok(HttpHeaders {
        headers: Some(HeaderMap { headers: list }),
        end_of_stream: u.ratio(1, 6)?,
        ..HttpHeaders::default()
    })
}

/// An image manifest of fuzzed layer sizes (so size and tag checks are reached), or any bytes.
fn body(u: &mut Unstructured<'_>) -> Result<HttpBody> {
    let body = if u.ratio(3, 4)? {
        let layers: Vec<String> = (0..u.int_in_range(0..=4)?)
            .map(|i| {
                let size = u.arbitrary::<u16>().map(|s| u64::from(s) * 16)?;
                Ok(format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{i:064x}","size":{size}}}"#
                ))
            })
            .collect::<Result<_>>()?;
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{:064x}","size":2}},"layers":[{}]}}"#,
            99,
            layers.join(",")
        )
        .into_bytes()
    } else {
        u.arbitrary()?
    };
    Ok(HttpBody {
        body,
        end_of_stream: u.ratio(7, 8)?,
        ..HttpBody::default()
    })
}

fn message(u: &mut Unstructured<'_>) -> Result<ProcessingRequest> {
    let request = match u.int_in_range(0..=6)? {
        0 => None,
        1 => Some(Phase::RequestHeaders(headers(u)?)),
        2 => Some(Phase::RequestBody(body(u)?)),
        3 => Some(Phase::ResponseHeaders(headers(u)?)),
        4 => Some(Phase::ResponseBody(HttpBody {
            body: u.arbitrary()?,
            end_of_stream: u.arbitrary()?,
            ..HttpBody::default()
        })),
        5 => Some(Phase::RequestTrailers(HttpTrailers::default())),
        _ => Some(Phase::ResponseTrailers(HttpTrailers::default())),
    };
    Ok(ProcessingRequest {
        request,
        ..ProcessingRequest::default()
    })
}

fn frames(u: &mut Unstructured<'_>) -> Result<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut count = 0;
    for _ in 0..u.int_in_range(1..=6)? {
        let encoded = message(u)?.encode_to_vec();
        // The gRPC length-prefixed frame: no compression, big-endian length.
        out.push(0);
        out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        out.extend_from_slice(&encoded);
        count += 1;
    }
    if u.ratio(1, 16)? {
        // Not a frame: a compressed one (never negotiated), or one cut short.
        let rest = u.bytes(u.len().min(32))?;
        out.push(u8::from(u.arbitrary::<bool>()?));
        out.extend_from_slice(&(rest.len() as u32 + 1).to_be_bytes());
        out.extend_from_slice(rest);
    }
    Ok((out, count))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // Paused time: deadlines and timers pass at once when nothing else can run, so a
        // decision that waits on the registry costs no wall time and replays the same way.
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
    })
}

fn run(frames: Vec<u8>, sent: usize) {
    runtime().block_on(async move {
        let (snapshot, metrics) = shared();
        let (tx, rx) = tokio::sync::watch::channel(snapshot.clone());
        let metrics = metrics.clone();
        let options = CheckOptions {
            client_check: true,
            ..CheckOptions::default()
        };
        let checker = Arc::new(Checker::new(FuzzRegistry, rx, options, metrics.clone()));
        let service = ExtProcService::new(checker, metrics);
        let inbound = tonic::codec::Streaming::new_request(
            tonic_prost::ProstDecoder::<ProcessingRequest>::default(),
            http_body_util::Full::new(Bytes::from(frames)),
            None,
            None,
        );
        let mut replies = service
            .process(tonic::Request::new(inbound))
            .await
            .expect("the adapter opens every stream")
            .into_inner();
        let mut answered = 0;
        let mut immediate = false;
        while let Some(reply) = replies.next().await {
            let Ok(ProcessingResponse { response, .. }) = reply else {
                // An error ends the stream; nothing may follow.
                assert!(replies.next().await.is_none(), "a reply after an error");
                break;
            };
            assert!(!immediate, "a reply after an immediate response");
            let response = response.expect("every reply carries a response");
            immediate = matches!(response, Reply::ImmediateResponse(_));
            answered += 1;
            assert!(answered <= sent, "{answered} replies to {sent} messages");
        }
        drop(tx);
    });
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok((frames, sent)) = frames(&mut u) {
        if std::env::var_os("FUZZ_SHOW").is_some() {
            // Replaying one input by hand: what the stream carried.
            let mut rest = &frames[..];
            while rest.len() >= 5 {
                let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                let end = (5 + len).min(rest.len());
                eprintln!("{:?}", ProcessingRequest::decode(&rest[5..end]));
                rest = &rest[end..];
            }
        }
        run(frames, sent);
    }
});
