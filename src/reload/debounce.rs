//! Debounce of one burst of filesystem events: quiet time after the last event, with a cap for a
//! directory that never goes quiet.

use std::time::{Duration, Instant};

/// A burst that never goes quiet is cut off after this many debounce periods.
const BURST_CAP_FACTOR: u32 = 3;

/// Debounce of one burst of events: quiet for `debounce` after the last one, or cut off at
/// `BURST_CAP_FACTOR × debounce` after the first.
#[derive(Debug, Clone, Copy)]
pub(super) struct Burst {
    last: Instant,
    cap: Instant,
    debounce: Duration,
}

impl Burst {
    pub(super) fn new(first: Instant, debounce: Duration) -> Self {
        Self {
            last: first,
            cap: first + debounce * BURST_CAP_FACTOR,
            debounce,
        }
    }

    pub(super) fn event(&mut self, at: Instant) {
        self.last = self.last.max(at);
    }

    pub(super) fn deadline(&self) -> Instant {
        (self.last + self.debounce).min(self.cap)
    }
}
