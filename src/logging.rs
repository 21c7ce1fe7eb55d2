//! Where log lines go and in what form: stderr, through a writer thread of
//! their own, as readable text or as one JSON object per line
//! (`--log-format`). Both formats write the same events with the same
//! fields: the access line (`sse::AccessLog`) is one `tracing::info!` call
//! whichever format prints it.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// What the log thread gathers before a write(2) when lines queue faster
/// than it drains them.
const LOG_BUFFER_BYTES: usize = 64 * 1024;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL TARGET: message key=value ...`, for people.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, the
    /// event's fields, and `target` (where it was logged), for log
    /// collectors.
    Json,
}

/// Starts logging to stderr in `format` for the rest of the process, at
/// the levels `RUST_LOG` names (info by default). The returned guard
/// writes out what is still queued when it is dropped: hold it until the
/// end of `main`.
pub fn init(format: LogFormat) -> WorkerGuard {
    // Log lines are written by a background thread, so a request does not
    // wait for stderr (only if 128k lines are queued). The thread flushes
    // its buffer whenever the queue runs empty, so under load many access
    // lines share one write(2) and no line waits for more to come.
    let (writer, guard) =
        NonBlockingBuilder::default()
            .lossy(false)
            .finish(std::io::BufWriter::with_capacity(
                LOG_BUFFER_BYTES,
                std::io::stderr(),
            ));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // The event's fields at the top level, beside `timestamp`, `level`
        // and `target` (ssegate logs no spans, so there are no span keys).
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    guard
}
