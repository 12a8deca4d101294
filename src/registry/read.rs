//! Why a catalog page or a manifest could not be read, and whether trying again may help.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::check::TagError;

/// Retry-After values above this are taken as this: an audit waits, it does not sleep for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A failed read of the registry. The text names no URL query and no credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the registry refused the credentials (HTTP {status})")]
    Unauthorized { status: u16 },
    #[error("HTTP {status}")]
    Status {
        status: u16,
        /// The server's `Retry-After`, in seconds form (an HTTP date is not read).
        retry_after: Option<Duration>,
    },
    #[error("the registry could not be reached: {0}")]
    Transport(String),
    #[error("the answer could not be read: {0}")]
    InvalidResponse(String),
}

impl ReadError {
    /// Whether the same request may succeed later: a rate limit, a server error, a deadline or
    /// a lost connection. A refusal or a malformed answer will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Transport(_) => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Unauthorized { .. } | Self::InvalidResponse(_) => false,
        }
    }

    /// How long the registry asked to be left alone, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(super) fn status(status: u16, headers: &HeaderMap) -> Self {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        Self::Status {
            status,
            retry_after,
        }
    }
}

impl From<TagError> for ReadError {
    fn from(error: TagError) -> Self {
        match error {
            TagError::Timeout(d) => Self::Timeout(d),
            TagError::Unauthorized { status } => Self::Unauthorized { status },
            TagError::Status { status } => Self::Status {
                status,
                retry_after: None,
            },
            TagError::Transport(text) => Self::Transport(text),
            TagError::InvalidResponse(text) => Self::InvalidResponse(text),
            TagError::Store(e) => Self::InvalidResponse(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_and_server_errors_are_transient_refusals_are_not() {
        let status = |status| ReadError::Status {
            status,
            retry_after: None,
        };
        assert!(status(429).is_transient() && status(500).is_transient());
        assert!(status(503).is_transient() && ReadError::Timeout(Duration::ZERO).is_transient());
        assert!(!status(404).is_transient() && !status(400).is_transient());
        assert!(!ReadError::Unauthorized { status: 401 }.is_transient());
        assert!(!ReadError::InvalidResponse("x".into()).is_transient());
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().expect("header"));
        assert_eq!(
            ReadError::status(429, &headers).retry_after(),
            Some(Duration::from_secs(3))
        );
        headers.insert(RETRY_AFTER, "86400".parse().expect("header"));
        assert_eq!(
            ReadError::status(429, &headers).retry_after(),
            Some(MAX_RETRY_AFTER)
        );
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2026 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(ReadError::status(503, &headers).retry_after(), None);
    }
}
