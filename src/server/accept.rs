//! What a listener does when `accept` fails: pause, and say so at most once a minute.
//!
//! Accept failures come in runs (out of descriptors until clients leave, flapping at the limit).
//! The kernel keeps the listener readable while connections wait in its backlog, so a loop that
//! retries at once spins at full CPU for as long as the run lasts. Both of precogd's listeners,
//! the Unix socket and the loopback `/metrics`, go through [`AcceptPause`].

use std::time::{Duration, Instant};

/// How often a run of failing accepts is logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// How long a listener waits after a failed accept before it tries again.
const PAUSE: Duration = Duration::from_millis(100);

/// The failed-accept state of one listener.
#[derive(Debug)]
pub struct AcceptPause {
    listener: &'static str,
    warned_at: Option<Instant>,
    failed_since_warned: u64,
}

impl AcceptPause {
    /// `listener` names the listener in the log (`socket`, `metrics`).
    pub fn new(listener: &'static str) -> AcceptPause {
        AcceptPause {
            listener,
            warned_at: None,
            failed_since_warned: 0,
        }
    }

    /// Counts a failed accept at `now`; when the run is due a warning, how many failures it
    /// reports (those since the last warning).
    fn note_failure(&mut self, now: Instant) -> Option<u64> {
        self.failed_since_warned += 1;
        if self
            .warned_at
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return None;
        }
        self.warned_at = Some(now);
        Some(std::mem::take(&mut self.failed_since_warned))
    }

    /// Records a failed accept, warns if none was said for a minute, and waits before the
    /// listener tries again.
    pub async fn after_failure(&mut self, error: &std::io::Error) {
        if let Some(failed_accepts) = self.note_failure(Instant::now()) {
            tracing::warn!(
                listener = self.listener,
                %error,
                failed_accepts,
                "cannot accept a connection; pausing accepts (raise LimitNOFILE if this is out \
                 of descriptors)"
            );
        }
        tokio::time::sleep(PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_is_warned_about_once_a_minute() {
        let mut pause = AcceptPause::new("socket");
        let start = Instant::now();
        assert_eq!(pause.note_failure(start), Some(1));

        let warned = (1..600)
            .filter_map(|i| pause.note_failure(start + PAUSE * i))
            .count();
        assert_eq!(warned, 0, "warned again within the minute");
        assert_eq!(pause.note_failure(start + WARN_EVERY), Some(600));
        assert_eq!(pause.note_failure(start + WARN_EVERY + PAUSE), None);
    }
}
