//! The report of `kiln-bench bench`: every run and the median of each
//! figure, with the targets checked on the medians, as a table or
//! as one JSON object.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::figures::Figure;
use super::{BenchArgs, raw_batch};
use crate::stats;

/// Targets of the issue, checked on the medians.
const TARGET_COMMANDS_PER_S: f64 = 15_000.0;
const TARGET_P99_MS: f64 = 20.0;
const TARGET_CEILING_SHARE: f64 = 1.0 / 3.0;

/// One target: its name, what it asks, the median measured, whether met.
type Target = (&'static str, String, f64, bool);

/// Prints the report of `runs` (at least one) on stdout.
pub fn print(args: &BenchArgs, parent: &Path, runs: &[Vec<Figure>]) -> anyhow::Result<()> {
    let medians = medians(runs);
    let targets = targets(runs, &medians);
    if args.json {
        print_json(args, runs, &medians, &targets)
    } else {
        print_table(args, parent, runs, &medians, &targets);
        Ok(())
    }
}

/// A figure of a run by key: one the run could not measure counts as NaN.
fn of_run(run: &[Figure], key: &str) -> f64 {
    run.iter()
        .find(|f| f.key == key)
        .map_or(f64::NAN, |f| f.value)
}

/// The median over the runs of each figure of the first run.
fn medians(runs: &[Vec<Figure>]) -> Vec<f64> {
    runs[0]
        .iter()
        .map(|f| stats::median(&runs.iter().map(|r| of_run(r, f.key)).collect::<Vec<_>>()))
        .collect()
}

fn targets(runs: &[Vec<Figure>], medians: &[f64]) -> [Target; 3] {
    let value = |key: &str| {
        runs[0]
            .iter()
            .position(|f| f.key == key)
            .map_or(f64::NAN, |i| medians[i])
    };
    [
        (
            "commands_per_s",
            format!(">= {TARGET_COMMANDS_PER_S:.0} commands/s"),
            value("http_commands_per_s"),
            value("http_commands_per_s") >= TARGET_COMMANDS_PER_S,
        ),
        (
            "p99_ms",
            format!("p99 < {TARGET_P99_MS:.0} ms"),
            value("http_p99_ms"),
            value("http_p99_ms") < TARGET_P99_MS,
        ),
        (
            "share_of_raw_ceiling",
            "HTTP >= 1/3 of the raw SQL ceiling (multi-row INSERTs)".to_string(),
            value("ratio_http_raw_sql_multi_row"),
            value("ratio_http_raw_sql_multi_row") >= TARGET_CEILING_SHARE,
        ),
    ]
}

fn print_json(
    args: &BenchArgs,
    runs: &[Vec<Figure>],
    medians: &[f64],
    targets: &[Target],
) -> anyhow::Result<()> {
    let (model, cpus, memory) = stats::machine();
    let per_run: Vec<Value> = runs
        .iter()
        .map(|r| {
            Value::Object(
                r.iter()
                    .map(|f| (f.key.to_string(), json!(f.value)))
                    .collect(),
            )
        })
        .collect();
    let median: Map<String, Value> = runs[0]
        .iter()
        .zip(medians)
        .map(|(f, m)| (f.key.to_string(), json!(m)))
        .collect();
    let out = json!({
        "machine": { "cpu": model, "cpus": cpus, "memory": memory },
        "config": {
            "accounts": args.accounts,
            "connections": args.connections,
            "commands": args.commands,
            "warmup": args.warmup,
            "runs": args.runs,
            "client_threads": args.client_threads,
            "max_batch": args.tuning.max_batch,
            "raw_sql_batch": raw_batch(args),
            "pooling": !args.tuning.no_pooling,
        },
        "median": median,
        "runs": per_run,
        "targets": targets.iter().map(|(name, what, value, met)| json!({
            "name": name, "target": what, "value": value, "met": met,
        })).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn print_table(
    args: &BenchArgs,
    parent: &Path,
    runs: &[Vec<Figure>],
    medians: &[f64],
    targets: &[Target],
) {
    let (model, cpus, memory) = stats::machine();
    println!();
    println!(
        "kiln bench: {} accounts, {} connections, {} deposits per run (after {} warm-up), {} run(s), max batch {}, {} client thread(s)",
        args.accounts,
        args.connections,
        args.commands,
        args.warmup,
        args.runs,
        args.tuning.max_batch,
        args.client_threads
    );
    println!(
        "machine: {model}, {cpus} CPUs, {memory}; databases in {}",
        parent.display()
    );
    println!();
    let width = runs[0]
        .iter()
        .map(|f| f.label.chars().count())
        .max()
        .unwrap_or(0);
    let mut header = format!("{:width$}  {:>10}", "", "median");
    for i in 1..=runs.len() {
        header.push_str(&format!("  {:>10}", format!("run {i}")));
    }
    println!("{header}");
    for (i, f) in runs[0].iter().enumerate() {
        let d = f.decimals;
        let mut line = format!("{:width$}  {:>10.d$}", f.label, medians[i]);
        for r in runs {
            line.push_str(&format!("  {:>10.d$}", of_run(r, f.key)));
        }
        println!("{line}");
    }
    println!();
    println!("targets (medians):");
    for (_, what, value, met) in targets {
        println!(
            "  {:40} {:>10.3}  {}",
            what,
            value,
            if *met { "met" } else { "NOT met" }
        );
    }
}
