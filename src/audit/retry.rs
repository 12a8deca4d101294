//! Bounded retries with exponential backoff for registry reads, each attempt holding one of the
//! audit's request permits.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::registry::ReadError;

/// Attempts per read: the first and three retries.
pub(super) const ATTEMPTS: u32 = 4;
/// The wait before the first retry; it doubles before each next one (200, 400, 800 ms).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// A read that failed for good: the last error and how many attempts were made.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) error: ReadError,
    pub(super) attempts: u32,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.attempts > 1 {
            write!(f, "{} (after {} attempts)", self.error, self.attempts)
        } else {
            write!(f, "{}", self.error)
        }
    }
}

/// Runs `read` until it succeeds, fails for good, or [`ATTEMPTS`] are spent. Transient errors
/// (429, 5xx, deadline, connection) are retried after the server's `Retry-After` or the backoff;
/// the permit is held only while a request is in flight, never while waiting.
pub(super) async fn with_retries<T, F, Fut>(permits: &Semaphore, mut read: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ReadError>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let result = {
            // The semaphore is never closed; a closed one would only mean running unbounded.
            let _permit = permits.acquire().await.ok();
            read().await
        };
        match result {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() && attempt < ATTEMPTS => {
                tokio::time::sleep(error.retry_after().unwrap_or(backoff)).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(error) => {
                return Err(Failure {
                    error,
                    attempts: attempt,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn status(status: u16) -> ReadError {
        ReadError::Status {
            status,
            retry_after: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_error_is_retried_until_it_passes() {
        let permits = Semaphore::new(1);
        let calls = AtomicU32::new(0);
        let result = with_retries(&permits, || async {
            if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                Err(status(503))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.expect("third attempt passes"), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded_and_the_last_error_is_kept() {
        let permits = Semaphore::new(1);
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let failure = with_retries(&permits, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(status(500))
        })
        .await
        .expect_err("always 500");
        assert_eq!(calls.load(Ordering::Relaxed), ATTEMPTS);
        assert_eq!(failure.attempts, ATTEMPTS);
        assert_eq!(failure.to_string(), "HTTP 500 (after 4 attempts)");
        assert_eq!(started.elapsed(), Duration::from_millis(200 + 400 + 800));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_retried_and_retry_after_is_honoured() {
        let permits = Semaphore::new(1);
        let calls = AtomicU32::new(0);
        let failure = with_retries(&permits, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(ReadError::Unauthorized { status: 401 })
        })
        .await
        .expect_err("refused");
        assert_eq!((calls.load(Ordering::Relaxed), failure.attempts), (1, 1));

        let started = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let _ = with_retries(&permits, || async {
            if calls.fetch_add(1, Ordering::Relaxed) == 0 {
                Err(ReadError::Status {
                    status: 429,
                    retry_after: Some(Duration::from_secs(3)),
                })
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
