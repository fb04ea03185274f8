//! Logging: `tracing` to stderr, pretty on a terminal and JSON elsewhere, level from
//! `RUST_LOG`; and traces of the same spans over OTLP when `OTEL_*` asks for them
//! ([`traces`]). Nothing here ever formats a secret: spans carry ids and route templates.
//!
//! Logging never blocks the service. A line goes into a bounded queue that one thread of
//! its own writes to stderr, so a log pipe that stalls (a log shipper that stopped
//! reading, a pipe nobody reads) holds up only that thread:
//! - when the queue is full, lines are dropped and counted
//!   (`log_lines_dropped_total{reason="queue_full"}`), and once the pipe takes lines again
//!   a warning says how many were lost;
//! - a write that fails (`EPIPE` once the reader has exited, `ENOSPC`) is counted
//!   (`reason="write_failed"`) and otherwise ignored;
//! - [`flush`] waits for the queue only up to a deadline, so exiting never hangs on it.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{self, Env, LogFormat, Traces};
use crate::metrics::{LogDrop, count_dropped_log_line};

mod traces;
pub use traces::{TRACEPARENT, continue_trace, describe_span, probe_collector, traceparent};

/// Default filter when `RUST_LOG` is unset: our own info, quieter dependencies.
const DEFAULT_FILTER: &str = "info,sqlx=warn,hyper=warn,tower_http=info";
/// Lines the queue holds at most: about a MiB of JSON lines, far more than a busy bot logs
/// in a second.
const QUEUE_LINES: usize = 4_096;
/// How long a panic waits for its line to be written.
const PANIC_FLUSH: Duration = Duration::from_millis(500);

/// The process's log queue.
struct Queue {
    lines: SyncSender<Vec<u8>>,
    /// Lines taken into the queue.
    queued: AtomicU64,
    /// Lines the writer has finished with, written or not.
    finished: AtomicU64,
    /// Lines dropped, for the writer's notice.
    dropped: AtomicU64,
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

impl Queue {
    fn drop_line(&self, reason: LogDrop) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        count_dropped_log_line(reason);
    }
}

/// Installs the global subscriber, reading `RUST_LOG` and `LOG_FORMAT` from `env`, and
/// the writer thread behind it; with `export_traces`, also the trace export `OTEL_*`
/// asks for (when the variables are invalid there is none: the caller reports them).
/// Safe to call more than once (later calls do nothing).
pub fn init(env: &Env, export_traces: bool) {
    let mut first = false;
    QUEUE.get_or_init(|| {
        first = true;
        start(io::stderr())
    });
    if !first {
        return;
    }
    let filter = env
        .get("RUST_LOG")
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let logs = tracing_subscriber::fmt::layer().with_writer(Lines);
    let logs = match LogFormat::from_env(env) {
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).boxed(),
        LogFormat::Pretty => logs.boxed(),
    };
    let traces = export_traces.then(|| config::traces(env));
    let export = match &traces {
        Some(Ok(Traces::On(export))) => Some(&**export),
        _ => None,
    };
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(export.map(traces::layer))
        .try_init();
    match traces {
        Some(Ok(Traces::On(export))) => tracing::info!(
            endpoint = %export.endpoint,
            protocol = export.protocol.as_str(),
            sampler = export.sampler.name,
            "exporting traces"
        ),
        Some(Err(problems)) => {
            let problems: Vec<String> = problems
                .0
                .iter()
                .map(|p| format!("{}: {}", p.var, p.expected))
                .collect();
            tracing::warn!(
                problems = problems.join("; "),
                "the OTEL_* settings are invalid, so no traces are exported (`check` lists each problem)"
            );
        }
        _ => {}
    }
    // The default hook writes to stderr itself, and would block on a stalled pipe.
    std::panic::set_hook(Box::new(|panic| {
        tracing::error!(panic = %panic, "panicked");
        flush_logs(PANIC_FLUSH);
    }));
}

/// The queue, and the thread that writes it to `out`.
fn start(out: impl Write + Send + 'static) -> Queue {
    let (lines, receiver) = mpsc::sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_out(&receiver, out))
        .expect("the log writer thread starts");
    Queue {
        lines,
        queued: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    }
}

/// Writes each queued line to `out` until the process ends. When the queue runs dry after
/// a line went out, lines dropped since the last notice are reported, through the queue.
fn write_out(lines: &Receiver<Vec<u8>>, mut out: impl Write) {
    let mut reported = 0;
    let mut wrote = false;
    loop {
        let line = match lines.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => {
                if let Some(queue) = QUEUE.get() {
                    let dropped = queue.dropped.load(Ordering::Relaxed);
                    if wrote && dropped > reported {
                        tracing::warn!(
                            dropped = dropped - reported,
                            "log lines were dropped while the log pipe was full or failing"
                        );
                        reported = dropped;
                    }
                }
                match lines.recv() {
                    Ok(line) => line,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        wrote = out.write_all(&line).is_ok();
        if let Some(queue) = QUEUE.get() {
            if !wrote {
                queue.drop_line(LogDrop::WriteFailed);
            }
            queue.finished.fetch_add(1, Ordering::Release);
        }
    }
}

/// Exports the spans finished so far, then writes every line queued so far (or fails to),
/// within `within` altogether. Whether all of it went out.
pub fn flush(within: Duration) -> bool {
    let until = Instant::now() + within;
    let exported = traces::flush(within / 2);
    let written = flush_logs(until.saturating_duration_since(Instant::now()));
    exported && written
}

/// Waits until every line queued so far is written (or failed), for at most `within`.
/// Whether it was.
fn flush_logs(within: Duration) -> bool {
    let Some(queue) = QUEUE.get() else {
        return true;
    };
    let target = queue.queued.load(Ordering::Acquire);
    let until = Instant::now() + within;
    while queue.finished.load(Ordering::Acquire) < target {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// The subscriber's writer: each formatted event goes into the queue whole, or is dropped.
struct Lines;

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Self::Writer {
        Lines
    }
}

impl Write for Lines {
    /// Never blocks and never fails: a line the queue has no room for is counted instead.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if let Some(queue) = QUEUE.get() {
            match queue.lines.try_send(line.to_vec()) {
                Ok(()) => {
                    queue.queued.fetch_add(1, Ordering::Release);
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => queue.drop_line(LogDrop::QueueFull),
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
