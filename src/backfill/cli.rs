//! `wal-listener backfill`: request a backfill (and watch it), list backfills, cancel one.
//!
//! A request is checked here first — each table exists, is in the publication and has a key;
//! `--where` parses — so that a mistake is said at once, with its fix, instead of failing in
//! the service later. Then it is written into the WAL; the service streaming from the slot
//! stores it in the KV bucket when the stream reaches it, and runs it.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::config::{Config, PublisherKind};
use crate::source::sql::{self, quote_ident};

use super::store::{Backfill, Status, Store};
use super::{Control, Request, new_id, runner, table};

/// The command line.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// A table to backfill (schema.table); repeat for several.
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
    /// Only rows meeting this SQL condition.
    #[arg(long = "where", value_name = "SQL")]
    pub filter: Option<String>,
    /// Rows per chunk (default: listener.backfillChunkSize).
    #[arg(long)]
    pub chunk_size: Option<u32>,
    /// Show progress until the backfill is done.
    #[arg(long)]
    pub wait: bool,
    /// List the slot's backfills and their progress.
    #[arg(long, conflicts_with_all = ["tables", "cancel", "wait"])]
    pub status: bool,
    /// Stop a backfill.
    #[arg(long, value_name = "ID", conflicts_with_all = ["tables", "wait"])]
    pub cancel: Option<String>,
}

/// Run the command; `Err` is the one line to print (exit 1).
pub async fn run(config: &Config, args: Args) -> Result<(), String> {
    if config.publisher.kind != PublisherKind::Nats {
        return Err(format!(
            "backfills keep their progress in a JetStream KV bucket, so they need publisher.type: nats (this config has {:?})",
            config.publisher.kind
        ));
    }
    if args.status {
        return status(config).await;
    }
    if let Some(id) = &args.cancel {
        let client = sql::connect(config).await.map_err(|e| e.to_string())?;
        let control = Control::Cancel {
            slot: config.listener.slot_name.clone(),
            id: id.clone(),
        };
        runner::emit(&client, &control).await.map_err(|e| e.to_string())?;
        println!(
            "backfill {id}: cancellation requested; the service streaming from slot {} stops it before its next chunk",
            config.listener.slot_name
        );
        return Ok(());
    }
    let request = request(config, &args).await?;
    println!(
        "backfill {} requested: {} (slot {}); `wal-listener backfill --status` shows its progress",
        request.id,
        request
            .tables
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        request.slot
    );
    if args.wait {
        wait(config, &request.id).await
    } else {
        Ok(())
    }
}

/// Check the tables and `--where`, and write the request into the WAL.
async fn request(config: &Config, args: &Args) -> Result<Request, String> {
    if args.tables.is_empty() {
        return Err("name the tables to backfill with --table schema.table (repeat it for several)".into());
    }
    if args.chunk_size == Some(0) {
        return Err("--chunk-size must be at least 1".into());
    }
    let client = sql::connect(config).await.map_err(|e| e.to_string())?;
    let mut tables = Vec::new();
    for name in &args.tables {
        let resolved = table::resolve(&client, name).await?;
        let plan = table::plan(&client, &config.listener.publication, &resolved).await?;
        if let Some(filter) = &args.filter {
            let sql = format!(
                "EXPLAIN SELECT 1 FROM {}.{} WHERE ({filter})",
                quote_ident(&plan.name.schema),
                quote_ident(&plan.name.table)
            );
            client.simple_query(&sql).await.map_err(|e| {
                format!(
                    "--where {filter:?} does not work on {resolved}: {}",
                    sql::db_error_text(&e)
                )
            })?;
        }
        if !tables.contains(&resolved) {
            tables.push(resolved);
        }
    }
    let request = Request {
        slot: config.listener.slot_name.clone(),
        id: new_id(),
        tables,
        filter: args.filter.clone(),
        chunk_size: args.chunk_size,
        snapshot: false,
    };
    runner::emit(&client, &Control::Request(request.clone()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(request)
}

async fn nats(config: &Config) -> Result<async_nats::Client, String> {
    crate::publish::client(config)
        .await
        .map(|(client, _)| client)
        .map_err(|e| e.to_string())
}

/// `--status`: every backfill of the slot.
async fn status(config: &Config) -> Result<(), String> {
    let client = nats(config).await?;
    let Some(store) = Store::existing(&client, &config.listener.slot_name).await else {
        println!("no backfills for slot {}", config.listener.slot_name);
        return Ok(());
    };
    let all = store.list().await.map_err(|e| e.to_string())?;
    if all.is_empty() {
        println!("no backfills for slot {}", config.listener.slot_name);
    }
    for b in &all {
        println!("{}", line(b));
        for t in &b.tables {
            let state = match (&t.skipped, t.done) {
                (Some(why), _) => format!("skipped: {why}"),
                (None, true) => "done".into(),
                (None, false) => "pending".into(),
            };
            println!(
                "  {}: {} rows of ~{} in {} chunks, {state}",
                t.name, t.rows, t.estimate, t.chunks
            );
        }
    }
    Ok(())
}

fn line(b: &Backfill) -> String {
    let mut text = format!(
        "{} {}: {} rows, requested {}",
        b.id,
        b.status.as_str(),
        b.rows(),
        b.requested_at
    );
    if let Some(at) = &b.finished_at {
        text.push_str(&format!(", finished {at}"));
    }
    if let Some(filter) = &b.filter {
        text.push_str(&format!(", where {filter}"));
    }
    if let Some(error) = &b.error {
        text.push_str(&format!(": {error}"));
    }
    text
}

/// `--wait`: progress until the backfill ends.
async fn wait(config: &Config, id: &str) -> Result<(), String> {
    let client = nats(config).await?;
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut store = None;
    let mut hinted = false;
    let mut last_line = String::new();
    loop {
        if store.is_none() {
            store = Store::existing(&client, &config.listener.slot_name).await;
        }
        let current = match &store {
            Some(store) => store.get(id).await.map_err(|e| e.to_string())?,
            None => None,
        };
        let Some(b) = current else {
            if !hinted && started.elapsed() > Duration::from_secs(15) {
                eprintln!(
                    "waiting for the service streaming from slot {} to pick the request up (is it running?)",
                    config.listener.slot_name
                );
                hinted = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let done = b.rows();
        let estimate: u64 = b.tables.iter().map(|t| t.estimate.max(t.rows)).sum();
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let progress = if tty {
            let fraction = if estimate > 0 {
                (done as f64 / estimate as f64).min(1.0)
            } else {
                0.0
            };
            let filled = (fraction * 30.0) as usize;
            let eta = if rate > 0.0 && estimate > done {
                format!(", ETA {:.0}s", (estimate - done) as f64 / rate)
            } else {
                String::new()
            };
            format!(
                "\r[{}{}] {:>3.0}% {done}/~{estimate} rows, {rate:.0} rows/s{eta}   ",
                "#".repeat(filled),
                " ".repeat(30 - filled),
                fraction * 100.0
            )
        } else {
            let chunks: u64 = b.tables.iter().map(|t| t.chunks).sum();
            format!(
                "backfill {id}: {} {done}/~{estimate} rows, {chunks} chunks",
                b.status.as_str()
            )
        };
        if progress != last_line {
            if tty {
                eprint!("{progress}");
                let _ = std::io::stderr().flush();
            } else {
                println!("{progress}");
            }
            last_line = progress;
        }
        if b.status.finished() {
            if tty {
                eprintln!();
            }
            let summary = format!(
                "backfill {id} {}: {done} rows from {} tables in {:.1}s",
                b.status.as_str(),
                b.tables.len(),
                started.elapsed().as_secs_f64()
            );
            return match b.status {
                Status::Done => {
                    println!("{summary}");
                    Ok(())
                }
                _ => Err(match &b.error {
                    Some(error) => format!("{summary}: {error}"),
                    None => summary,
                }),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
