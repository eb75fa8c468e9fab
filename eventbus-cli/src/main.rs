//! `eventbus`: operate a service's event bus through its admin API (the `admin` feature of
//! the `eventbus` crate): dead letters, replay, catalog export, topic provisioning and lag.
//!
//! ```text
//! cargo run -p eventbus-cli -- --url http://127.0.0.1:9090 dlq list --topic orders
//! ```
//!
//! The URL and token come from `--url` / `--token` or `EVENTBUS_ADMIN_URL` /
//! `EVENTBUS_ADMIN_TOKEN`. Exit status: 0 on success, 1 when the operation failed (the
//! message says why), 2 for a usage error.

mod client;
mod commands;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use client::Client;

/// Operate an eventbus service through its admin API.
#[derive(Debug, Parser)]
#[command(name = "eventbus", version, about, propagate_version = true)]
struct Cli {
    /// Base URL of the service's admin API.
    #[arg(
        long,
        env = "EVENTBUS_ADMIN_URL",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    url: String,
    /// Bearer token for mutating endpoints (redrive, purge, replay, provision).
    #[arg(
        long,
        env = "EVENTBUS_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for each HTTP request.
    #[arg(long, default_value_t = 30, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead letters: list, show, redrive, purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Re-deliver the events of a time window, marked as replays.
    Replay(ReplayArgs),
    /// The event catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Topics (Kafka) and consumer groups (Redis).
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Consumer-group lag.
    Lag,
    /// Readiness, circuit breakers and versions.
    Status,
}

/// Filters shared by the dead-letter commands.
#[derive(Debug, Args, Clone, Default)]
struct DlqFilter {
    /// Event-type pattern (`order.*`, `#`).
    #[arg(long = "type", value_name = "PATTERN")]
    event_type: Option<String>,
    /// Text the error message contains (case-insensitive).
    #[arg(long)]
    error: Option<String>,
    /// Consumer group that gave up.
    #[arg(long)]
    group: Option<String>,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters (of every topic the service knows unless --topic).
    List {
        /// The original topic.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        filter: DlqFilter,
        /// Skip this many.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Show at most this many (≤ 500).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one dead letter: its failure and the original envelope.
    Show {
        /// The original topic.
        topic: String,
        /// The dead letter's id.
        id: String,
    },
    /// Put dead letters back on their topic, in order.
    Redrive(Selection),
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        selection: Selection,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Which dead letters of a topic to act on.
#[derive(Debug, Args, Clone)]
struct Selection {
    /// The original topic.
    topic: String,
    /// Dead-letter ids; with none, --all is required.
    ids: Vec<String>,
    /// Every dead letter of the topic matching the filters.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    #[command(flatten)]
    filter: DlqFilter,
    /// Ids per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The topic to replay.
    #[arg(long)]
    topic: String,
    /// Window start: RFC 3339 (`2026-11-23T10:00:00Z`), `now`, or an age (`2h`, `30m`, `7d`).
    #[arg(long)]
    from: String,
    /// Window end, like --from.
    #[arg(long, default_value = "now")]
    to: String,
    /// Event-type pattern (`order.*`); every type when absent.
    #[arg(long = "type", value_name = "PATTERN")]
    event_type: Option<String>,
    /// Deliver to this consumer group only (every group of the topic when absent).
    #[arg(long)]
    group: Option<String>,
    /// Return once started instead of following the progress.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CatalogFormat {
    /// The catalog as JSON, each event with its JSON schema.
    Json,
    /// An AsyncAPI 3.0.0 document.
    Asyncapi,
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Print or write the catalog.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value = "json")]
        format: CatalogFormat,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the catalog's topics (Kafka) or consumer groups (Redis).
    Provision {
        /// Only these catalog topics (repeatable); all by default.
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Partitions per topic.
        #[arg(long)]
        partitions: Option<u32>,
        /// Replication factor.
        #[arg(long)]
        replication: Option<u16>,
        /// Retention (`12h`, `7d`, `2w`).
        #[arg(long)]
        retention: Option<String>,
        /// Compression: none, gzip, snappy, lz4, zstd, producer.
        #[arg(long)]
        compression: Option<String>,
        /// Show the plan without creating anything.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = match Client::new(
        &cli.url,
        cli.token.clone(),
        Duration::from_secs(cli.timeout.max(1)),
    ) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    match commands::run(&cli, &client) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            match error {
                client::CliError::Usage { .. } => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
