//! A circuit breaker for the agent (REL-04). When Databricks — or the company's agent —
//! keeps failing with transient errors (timeouts, 5xx, rate limits), every worker would
//! spend its time waiting on calls that fail. After [`FAILURES_TO_OPEN`] transient failures
//! in a row the breaker opens: for [`OPEN_SECONDS`] questions are put back in the queue at
//! once, to be asked when it closes, instead of being sent. Nothing is dropped; Slack is
//! acknowledged as ever. After the pause the next answer closes it, the next transient
//! failure opens it again.
//!
//! One breaker per process: each replica learns on its own.

use std::sync::Mutex;

/// Transient failures in a row that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long it stays open, in seconds.
pub const OPEN_SECONDS: i64 = 30;

/// The breaker's state.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures_in_a_row: u32,
    open_until: i64,
}

impl Breaker {
    /// Seconds left while the breaker is open at `now`; `None` when calls may go out.
    pub fn open_for(&self, now: i64) -> Option<i64> {
        let state = self.state.lock().expect("not poisoned");
        (state.open_until > now).then(|| state.open_until - now)
    }

    /// A call went through (an answer, or a failure retrying will not fix).
    pub fn succeeded(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        state.failures_in_a_row = 0;
    }

    /// A call failed in a way that may pass; true when this failure opened the breaker.
    pub fn failed(&self, now: i64) -> bool {
        let mut state = self.state.lock().expect("not poisoned");
        state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
        if state.failures_in_a_row >= FAILURES_TO_OPEN && state.open_until <= now {
            state.open_until = now + OPEN_SECONDS;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_closes_after_the_pause_and_reopens_on_the_next_failure() {
        let breaker = Breaker::default();
        for _ in 1..FAILURES_TO_OPEN {
            assert!(!breaker.failed(100));
        }
        assert_eq!(breaker.open_for(100), None, "not yet");
        assert!(breaker.failed(100), "the fifth failure in a row opens it");
        assert_eq!(breaker.open_for(110), Some(OPEN_SECONDS - 10));
        assert_eq!(breaker.open_for(100 + OPEN_SECONDS), None, "closed after the pause");
        assert!(breaker.failed(200), "still failing: open again at once");
        assert_eq!(breaker.open_for(200), Some(OPEN_SECONDS));

        breaker.succeeded();
        for _ in 1..FAILURES_TO_OPEN {
            assert!(!breaker.failed(300), "an answer starts the count again");
        }
    }
}
