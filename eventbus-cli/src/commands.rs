//! What each command does, and how its answer is printed.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::client::{encode, CliError, Client};
use crate::{
    CatalogCommand, CatalogFormat, Cli, Command, DlqCommand, DlqFilter, ReplayArgs, Selection,
    TopicsCommand,
};

/// Largest page the admin API serves.
const PAGE: usize = 500;

/// Runs the command `cli` names.
pub(crate) fn run(cli: &Cli, client: &Client) -> Result<(), CliError> {
    match &cli.command {
        Command::Dlq(DlqCommand::List {
            topic,
            filter,
            offset,
            limit,
        }) => dlq_list(cli, client, topic.as_deref(), filter, *offset, *limit),
        Command::Dlq(DlqCommand::Show { topic, id }) => dlq_show(cli, client, topic, id),
        Command::Dlq(DlqCommand::Redrive(selection)) => {
            dlq_act(cli, client, selection, Action::Redrive)
        }
        Command::Dlq(DlqCommand::Purge { selection, yes }) => {
            confirm_purge(selection, *yes)?;
            dlq_act(cli, client, selection, Action::Purge)
        }
        Command::Replay(args) => replay(cli, client, args),
        Command::Catalog(CatalogCommand::Export { format, output }) => {
            catalog_export(client, *format, output.as_deref())
        }
        Command::Topics(TopicsCommand::Provision {
            topics,
            partitions,
            replication,
            retention,
            compression,
            dry_run,
        }) => {
            let mut body = json!({ "dry_run": dry_run });
            if !topics.is_empty() {
                body["topics"] = json!(topics);
            }
            for (name, value) in [
                ("partitions", partitions.map(Value::from)),
                ("replication", replication.map(Value::from)),
                ("retention", retention.clone().map(Value::from)),
                ("compression", compression.clone().map(Value::from)),
            ] {
                if let Some(value) = value {
                    body[name] = value;
                }
            }
            provision(cli, client, body)
        }
        Command::Lag => lag(cli, client),
        Command::Status => status(cli, client),
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Prints rows under headers, columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn filter_query(filter: &DlqFilter) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(t) = &filter.event_type {
        query.push(("type", t.clone()));
    }
    if let Some(e) = &filter.error {
        query.push(("error", e.clone()));
    }
    if let Some(g) = &filter.group {
        query.push(("group", g.clone()));
    }
    query
}

fn query_string(pairs: &[(&str, String)]) -> String {
    let joined: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if joined.is_empty() {
        String::new()
    } else {
        format!("?{}", joined.join("&"))
    }
}

fn dlq_list(
    cli: &Cli,
    client: &Client,
    topic: Option<&str>,
    filter: &DlqFilter,
    offset: usize,
    limit: usize,
) -> Result<(), CliError> {
    let mut query = filter_query(filter);
    if let Some(topic) = topic {
        query.push(("topic", topic.to_owned()));
    }
    query.push(("offset", offset.to_string()));
    query.push(("limit", limit.to_string()));
    let page = client.get(&format!("/dlq{}", query_string(&query)))?;
    if cli.json {
        print_json(&page);
        return Ok(());
    }
    let items = page["items"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            vec![
                text(&d["original_topic"]),
                text(&d["id"]),
                text(&d["event_type"]),
                text(&d["group"]),
                text(&d["failure"]["attempts"]),
                text(&d["failure"]["last_failure"]),
                format!(
                    "{}: {}",
                    text(&d["failure"]["kind"]),
                    text(&d["failure"]["message"])
                ),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no dead letters");
    } else {
        table(
            &[
                "TOPIC",
                "ID",
                "TYPE",
                "GROUP",
                "ATTEMPTS",
                "LAST FAILURE",
                "ERROR",
            ],
            &rows,
        );
    }
    let sizes: Vec<String> = page["topics"]
        .as_array()
        .map(|topics| {
            topics
                .iter()
                .map(|t| format!("{}: {}", text(&t["topic"]), text(&t["size"])))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{} of {} matching, from offset {} (queue sizes: {})",
        items.len(),
        text(&page["total"]),
        offset,
        if sizes.is_empty() {
            "none".to_owned()
        } else {
            sizes.join(", ")
        }
    );
    Ok(())
}

fn dlq_show(cli: &Cli, client: &Client, topic: &str, id: &str) -> Result<(), CliError> {
    let letter = client.get(&format!("/dlq/{}/{}", encode(topic), encode(id)))?;
    if cli.json {
        print_json(&letter);
        return Ok(());
    }
    let f = &letter["failure"];
    let key = text(&letter["key"]);
    let lines = [
        ("id", text(&letter["id"])),
        (
            "topic",
            format!(
                "{} (dead-letter topic {})",
                text(&letter["original_topic"]),
                text(&letter["dlq_topic"])
            ),
        ),
        ("type", text(&letter["event_type"])),
        ("group", text(&letter["group"])),
        ("key", key),
        ("event id", text(&letter["event_id"])),
        (
            "failure",
            format!(
                "{} after {} attempt(s): {}",
                text(&f["kind"]),
                text(&f["attempts"]),
                text(&f["message"])
            ),
        ),
        ("first failure", text(&f["first_failure"])),
        ("last failure", text(&f["last_failure"])),
    ];
    for (label, value) in lines {
        println!("{:<14} {value}", format!("{label}:"));
    }
    if let Some(error) = letter["decode_error"].as_str() {
        println!("{:<14} {error}", "decode error:");
    }
    println!("envelope:");
    match &letter["envelope"] {
        Value::Null => println!("{}", text(&letter["payload_text"])),
        envelope => print_json(envelope),
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Redrive,
    Purge,
}

fn confirm_purge(selection: &Selection, yes: bool) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(
            "--yes",
            "purge deletes dead letters for good; confirm with --yes",
        ));
    }
    let what = if selection.all {
        "every matching dead letter".to_owned()
    } else {
        format!("{} dead letter(s)", selection.ids.len())
    };
    eprint!("Delete {what} of `{}` for good? [y/N] ", selection.topic);
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|source| CliError::Io {
            what: "reading the answer".into(),
            source,
        })?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::usage("--yes", "not confirmed; nothing deleted"))
    }
}

/// The ids a selection names: the given ones, or every matching dead letter (paged).
fn selected_ids(client: &Client, selection: &Selection) -> Result<Vec<String>, CliError> {
    if !selection.ids.is_empty() {
        if selection.filter.event_type.is_some()
            || selection.filter.error.is_some()
            || selection.filter.group.is_some()
        {
            return Err(CliError::usage(
                "--type/--error/--group",
                "filters apply with --all, not with ids",
            ));
        }
        return Ok(selection.ids.clone());
    }
    if !selection.all {
        return Err(CliError::usage(
            "ids",
            "give dead-letter ids, or --all (with optional --type, --error, --group)",
        ));
    }
    let mut ids = Vec::new();
    let base = filter_query(&selection.filter);
    loop {
        let mut query = base.clone();
        query.push(("offset", ids.len().to_string()));
        query.push(("limit", PAGE.to_string()));
        let page = client.get(&format!(
            "/dlq/{}{}",
            encode(&selection.topic),
            query_string(&query)
        ))?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        ids.extend(
            items
                .iter()
                .filter_map(|d| d["id"].as_str().map(str::to_owned)),
        );
        let total = page["total"].as_u64().unwrap_or(0) as usize;
        if items.is_empty() || ids.len() >= total {
            return Ok(ids);
        }
    }
}

fn progress(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_owned());
    bar
}

fn dlq_act(
    cli: &Cli,
    client: &Client,
    selection: &Selection,
    action: Action,
) -> Result<(), CliError> {
    if selection.batch == 0 || selection.batch > 1000 {
        return Err(CliError::usage("--batch", "must be between 1 and 1000"));
    }
    let ids = selected_ids(client, selection)?;
    let (verb, key) = match action {
        Action::Redrive => ("redriving", "redriven"),
        Action::Purge => ("purging", "purged"),
    };
    let path = match action {
        Action::Redrive => format!("/dlq/{}/redrive", encode(&selection.topic)),
        Action::Purge => format!("/dlq/{}", encode(&selection.topic)),
    };
    let bar = progress(ids.len() as u64, verb);
    let mut done = 0u64;
    for chunk in ids.chunks(selection.batch) {
        let body = Some(json!({ "ids": chunk }));
        let answer = match action {
            Action::Redrive => client.post(&path, body),
            Action::Purge => client.delete(&path, body),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                bar.abandon();
                if done > 0 {
                    eprintln!("{key} {done} of {} before the error", ids.len());
                }
                return Err(error);
            }
        };
        let n = answer[key].as_u64().unwrap_or(0);
        done += n;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let summary = json!({ "topic": selection.topic, "requested": ids.len(), key: done });
    if cli.json {
        print_json(&summary);
    } else {
        println!(
            "{key} {done} of {} dead letter(s) of {}",
            ids.len(),
            selection.topic
        );
    }
    Ok(())
}

/// `now`, an RFC 3339 time, or an age such as `2h` (that long ago).
fn parse_time(option: &str, text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, CliError> {
    let trimmed = text.trim();
    if trimmed == "now" {
        return Ok(now);
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(time.with_timezone(&Utc));
    }
    let age = trimmed.trim_start_matches('-').trim_end_matches(" ago");
    match humantime::parse_duration(age) {
        Ok(age) => chrono::Duration::from_std(age)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| CliError::usage(option, format!("`{text}` is too far back"))),
        _ => Err(CliError::usage(
            option,
            format!("`{text}` is not `now`, an RFC 3339 time (2026-11-23T10:00:00Z) or an age (30m, 2h, 7d)"),
        )),
    }
}

fn replay(cli: &Cli, client: &Client, args: &ReplayArgs) -> Result<(), CliError> {
    let now = Utc::now();
    let from = parse_time("--from", &args.from, now)?;
    let to = parse_time("--to", &args.to, now)?;
    let mut body = json!({ "topic": args.topic, "from": from.to_rfc3339(), "to": to.to_rfc3339() });
    if let Some(t) = &args.event_type {
        body["type"] = json!(t);
    }
    if let Some(g) = &args.group {
        body["group"] = json!(g);
    }
    let started = client.post("/replay", Some(body))?;
    let id = started["id"]
        .as_str()
        .ok_or_else(|| CliError::Protocol {
            url: "/replay".into(),
            message: "no replay id".into(),
        })?
        .to_owned();
    if args.no_wait {
        if cli.json {
            print_json(&started);
        } else {
            println!("replay {id} started; follow it with GET /replay/{id}");
        }
        return Ok(());
    }
    let bar = progress(0, "replaying");
    let finished = loop {
        let current = client.get(&format!("/replay/{}", encode(&id)))?;
        let status = &current["status"];
        bar.set_length(status["matched"].as_u64().unwrap_or(0));
        bar.set_position(status["replayed"].as_u64().unwrap_or(0));
        if status["done"] == true {
            break current;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    bar.finish_and_clear();
    let status = &finished["status"];
    if let Some(error) = status["error"].as_str() {
        return Err(CliError::ReplayFailed {
            id,
            message: error.to_owned(),
        });
    }
    if cli.json {
        print_json(&finished);
    } else {
        println!(
            "replayed {} of {} matching event(s) ({} in the window) from {} [{id}]",
            text(&status["replayed"]),
            text(&status["matched"]),
            text(&status["scanned"]),
            args.topic
        );
    }
    Ok(())
}

fn catalog_export(
    client: &Client,
    format: CatalogFormat,
    output: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let name = match format {
        CatalogFormat::Json => "json",
        CatalogFormat::Asyncapi => "asyncapi",
    };
    let document = client.get(&format!("/catalog?format={name}"))?;
    let text = serde_json::to_string_pretty(&document).unwrap_or_else(|_| document.to_string());
    match output {
        None => println!("{text}"),
        Some(path) => {
            std::fs::write(path, format!("{text}\n")).map_err(|source| CliError::Io {
                what: format!("writing {}", path.display()),
                source,
            })?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn provision(cli: &Cli, client: &Client, body: Value) -> Result<(), CliError> {
    let dry_run = body["dry_run"] == true;
    let answer = match client.post("/topics/provision", Some(body)) {
        Err(CliError::Api {
            status: 501,
            message,
            ..
        }) => {
            return Err(CliError::Api {
                status: 501,
                message: format!("not supported by this backend: {message}"),
                field: None,
            });
        }
        other => other?,
    };
    if cli.json {
        print_json(&answer);
        return Ok(());
    }
    let settings = &answer["settings"];
    let rows: Vec<Vec<String>> = answer["plan"]
        .as_array()
        .map(|plan| {
            plan.iter()
                .map(|p| {
                    let events: Vec<String> = p["events"]
                        .as_array()
                        .map(|e| e.iter().map(text).collect())
                        .unwrap_or_default();
                    vec![text(&p["topic"]), text(&p["dlq_topic"]), events.join(", ")]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["TOPIC", "DEAD LETTERS", "EVENTS"], &rows);
    println!(
        "partitions {}, replication {}, retention {} ms, compression {} (- = backend default)",
        text(&settings["partitions"]),
        text(&settings["replication"]),
        text(&settings["retention"]),
        text(&settings["compression"])
    );
    if dry_run {
        if answer["supported"] == false {
            println!(
                "dry run; provisioning is not supported by the {} backend",
                text(&answer["backend"])
            );
        } else {
            println!("dry run: nothing created");
        }
    } else {
        println!("provisioned on {}:", text(&answer["backend"]));
        print_json(&answer["result"]);
    }
    Ok(())
}

fn lag(cli: &Cli, client: &Client) -> Result<(), CliError> {
    let lag = client.get("/lag")?;
    if cli.json {
        print_json(&lag);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = lag["groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .map(|g| {
                    vec![
                        text(&g["group"]),
                        text(&g["stream"]),
                        text(&g["pending"]),
                        text(&g["lag"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        println!("no consumer groups");
    } else {
        table(&["GROUP", "STREAM", "PENDING", "LAG"], &rows);
    }
    println!(
        "total lag {}, pending {}",
        text(&lag["total_lag"]),
        text(&lag["total_pending"])
    );
    Ok(())
}

fn status(cli: &Cli, client: &Client) -> Result<(), CliError> {
    let version = client.get("/version")?;
    let (code, ready) = client.get_accepting("/ready", 503)?;
    if cli.json {
        print_json(&json!({ "version": version, "ready": ready }));
    } else {
        println!(
            "{} {} (eventbus {}) on {}: {}",
            text(&version["service"]),
            text(&version["version"]),
            text(&version["eventbus"]),
            text(&version["backend"]),
            text(&ready["status"])
        );
        if let Some(checks) = ready["checks"].as_object() {
            for (name, check) in checks {
                let error = check["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                println!("  {name}: {}{error}", text(&check["status"]));
            }
        }
        for circuit in ready["circuits"].as_array().cloned().unwrap_or_default() {
            println!(
                "  circuit {}: {}",
                text(&circuit["channel"]),
                text(&circuit["state"])
            );
        }
    }
    if code == 503 {
        return Err(CliError::Api {
            status: 503,
            message: "the service is not ready".into(),
            field: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_now_or_ages() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("time");
        assert_eq!(parse_time("--from", "now", now).expect("now"), now);
        assert_eq!(
            parse_time("--from", "2h", now).expect("age").to_rfc3339(),
            "2026-11-23T10:00:00+00:00"
        );
        assert_eq!(
            parse_time("--from", "-30m", now).expect("age").to_rfc3339(),
            "2026-11-23T11:30:00+00:00"
        );
        assert_eq!(
            parse_time("--from", "1d ago", now)
                .expect("age")
                .to_rfc3339(),
            "2026-11-22T12:00:00+00:00"
        );
        assert_eq!(
            parse_time("--from", "2026-11-23T09:15:00+01:00", now)
                .expect("rfc3339")
                .to_rfc3339(),
            "2026-11-23T08:15:00+00:00"
        );
        let err = parse_time("--to", "yesterday", now).expect_err("invalid");
        assert!(err.to_string().contains("--to"), "{err}");
        assert!(parse_time("--to", "99999999999999w", now).is_err());
    }
}
