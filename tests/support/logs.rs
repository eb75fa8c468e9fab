//! The warnings and errors the library (and librdkafka under it) logged in this test process,
//! kept for a case to look at; with `RUST_LOG` set, every log line goes to the test output too.

use std::fmt::Write as _;
use std::sync::{Mutex, Once};

use tracing::field::{Field, Visit};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// One warning or error.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// `WARN` or `ERROR`.
    pub level: tracing::Level,
    /// Where it was logged (module path, or `librdkafka`).
    pub target: String,
    /// Its message and fields, `name=value` each.
    pub text: String,
}

static LINES: Mutex<Vec<LogLine>> = Mutex::new(Vec::new());
static INSTALLED: Once = Once::new();

/// Keeps every warning and error in [`LINES`].
struct Keep;

impl<S: tracing::Subscriber> Layer<S> for Keep {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut text = String::new();
        event.record(&mut Text(&mut text));
        LINES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(LogLine {
                level: *event.metadata().level(),
                target: event.metadata().target().to_owned(),
                text,
            });
    }
}

/// Writes an event's fields as text.
struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

/// Installs this process's subscriber, once: warnings and errors are kept, and with
/// `RUST_LOG` set every line its filter passes goes to the test output.
pub fn install() {
    INSTALLED.call_once(|| {
        let output = std::env::var_os("RUST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(EnvFilter::from_default_env())
        });
        tracing_subscriber::registry()
            .with(Keep.with_filter(LevelFilter::WARN))
            .with(output)
            .try_init()
            .expect("the test process's subscriber is installed here, and only here");
    });
}

/// Where the log stands now, for [`since`].
pub fn mark() -> usize {
    LINES.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// The warnings and errors logged after `mark` whose text or target contains one of `needles`.
pub fn since(mark: usize, needles: &[&str]) -> Vec<LogLine> {
    let lines = LINES.lock().unwrap_or_else(|p| p.into_inner());
    lines
        .get(mark..)
        .unwrap_or_default()
        .iter()
        .filter(|line| {
            needles
                .iter()
                .any(|needle| line.text.contains(needle) || line.target.contains(needle))
        })
        .cloned()
        .collect()
}
