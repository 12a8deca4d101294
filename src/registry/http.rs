//! HTTP plumbing shared by tag-list and token requests: the clients, the redirect rule, bounded
//! bodies and error text that carries no secret.

use reqwest::Url;

use crate::check::TagError;

const MAX_REDIRECTS: usize = 5;

/// `insecure` accepts any TLS certificate. Plain http is allowed by both clients: whether the
/// gateway's credentials may go with a request is decided per request (`RegistryClient::http`).
pub(super) fn http_client(insecure: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
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

pub(super) async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, TagError> {
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
pub(super) fn transport(error: reqwest::Error) -> TagError {
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

pub(super) fn origin_and_path(url: &Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}
