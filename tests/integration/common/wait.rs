//! Waiting for what the app does in the background, without guessing how long it takes.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long a test waits for something the app is expected to do soon: long enough for a
/// loaded CI machine, short enough that a test which will never see it fails in time.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often [`eventually`] asks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Waits until `probe` finds what the test waits for, and returns it.
///
/// `probe` is called at once and then every 20 ms. The first `Some` it returns is the
/// result; `None` means "not yet". When `timeout` has passed without a `Some` (the probe
/// is called one last time at the deadline), the test panics with `what` and `timeout`,
/// so `what` should name the awaited event: "the job to settle", "a prompt to reach
/// Slack". A probe may itself panic to fail the test early, e.g. when a process it waits
/// on has exited. A slow probe is not interrupted: each call runs to its end.
///
/// This waits for something to happen; it cannot show that something does *not*
/// happen. For that, wait for an event that comes after it would have happened (the job's
/// final state, a later request), then assert it did not.
///
/// ```ignore
/// let prompt = eventually("a prompt to reach Slack", PATIENCE, || async {
///     app.slack_calls("chat.postEphemeral").await.into_iter().next()
/// })
/// .await;
/// // For a plain condition, return `Some(())` when it holds:
/// eventually("the job to be done", PATIENCE, || async {
///     (app.job_states().await == ["done"]).then_some(())
/// })
/// .await;
/// ```
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("gave up after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}
