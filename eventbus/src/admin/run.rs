//! Running a service until it is told to stop. On SIGTERM or SIGINT: `/ready` answers 503 at
//! once (the bus is stopping), the consumers drain, the bus's outbox dispatcher stops, the
//! producer flushes, and the admin server closes last, so `/live` answers throughout the drain.

use std::future::Future;
use std::time::Duration;

use super::AdminServer;
use crate::bus::{Bus, ShutdownReport};
use crate::error::Error;

/// Waits for SIGTERM or SIGINT (Ctrl-C); returns the signal's name.
pub async fn shutdown_signal() -> Result<&'static str, Error> {
    let interrupt = async { tokio::signal::ctrl_c().await.map(|()| "SIGINT") };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())
            .map_err(|e| Error::config("signals", format!("cannot listen for SIGTERM: {e}")))?;
        tokio::select! {
            name = interrupt => name.map_err(|e| Error::config("signals", format!("cannot listen for SIGINT: {e}"))),
            _ = terminate.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        interrupt
            .await
            .map_err(|e| Error::config("signals", format!("cannot listen for Ctrl-C: {e}")))
    }
}

/// Runs until SIGTERM or SIGINT, then stops in order within `drain`: the bus (consumers,
/// outbox dispatcher, producer flush; `/ready` is 503 from the first moment), then the admin
/// server. Fails only when the signals cannot be listened for.
///
/// ```no_run
/// # async fn demo(bus: std::sync::Arc<eventbus::Bus>) -> Result<(), eventbus::Error> {
/// use eventbus::admin::{self, AdminConfig};
/// use std::time::Duration;
///
/// let server = admin::serve(bus.clone(), AdminConfig::from_env("1.0.0")?).await?;
/// let report = admin::run_until_signal(&bus, Some(server), Duration::from_secs(30)).await?;
/// if !report.drained {
///     eprintln!("{} deliveries left for redelivery", report.aborted);
/// }
/// # Ok(()) }
/// ```
pub async fn run_until_signal(
    bus: &Bus,
    admin: Option<AdminServer>,
    drain: Duration,
) -> Result<ShutdownReport, Error> {
    let mut failed = None;
    let report = run_until(
        bus,
        admin,
        async {
            match shutdown_signal().await {
                Ok(name) => tracing::info!(signal = name, ?drain, "stopping"),
                Err(error) => failed = Some(error),
            }
        },
        drain,
    )
    .await;
    match failed {
        Some(error) => Err(error),
        None => Ok(report),
    }
}

/// [`run_until_signal`] with any stop condition: waits for `stop`, shuts the bus down within
/// `drain`, then closes the admin server.
pub async fn run_until(
    bus: &Bus,
    admin: Option<AdminServer>,
    stop: impl Future<Output = ()>,
    drain: Duration,
) -> ShutdownReport {
    let report = bus.run_until(stop, drain).await;
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    tracing::info!(
        drained = report.drained,
        aborted = report.aborted,
        "service stopped"
    );
    report
}
