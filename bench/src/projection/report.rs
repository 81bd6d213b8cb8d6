//! The report of `kiln-bench bench-projection`: every run and the median
//! of each figure, with the targets checked on the medians.

use std::path::Path;

use serde_json::json;

use super::ProjectionBenchArgs;
use crate::stats;

/// Targets of the issue, checked on the medians.
const TARGET_EVENTS_PER_S: f64 = 150_000.0;
const TARGET_SHARE_OF_READ: f64 = 0.5;
const TARGET_SWAP_P99_RATIO: f64 = 2.0;

/// The figures of one run, in the order of [`LABELS`].
pub type Row = [f64; 8];

/// Each figure's JSON key and table label.
const LABELS: [(&str, &str); 8] = [
    ("catch_up_events_per_s", "catch-up, events/s"),
    (
        "raw_read_events_per_s",
        "raw store read, events/s (ceiling)",
    ),
    ("ratio_catch_up_raw_read", "catch-up / raw read"),
    ("swap_s", "hot swap (rebuild + switch), s"),
    ("read_p50_ms_before", "row read p50 before, ms"),
    ("read_p99_ms_before", "row read p99 before, ms"),
    ("read_p50_ms_during_swap", "row read p50 during swap, ms"),
    ("read_p99_ms_during_swap", "row read p99 during swap, ms"),
];

/// One target: what it asks, the median measured, whether met.
type Target = (String, f64, bool);

/// Prints the report of `rows` on stdout, as a table or one JSON object.
pub fn print(args: &ProjectionBenchArgs, parent: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let medians: Vec<f64> = (0..LABELS.len())
        .map(|i| stats::median(&rows.iter().map(|r| r[i]).collect::<Vec<_>>()))
        .collect();
    let targets = targets(&medians);
    if args.json {
        print_json(args, rows, &medians, &targets)
    } else {
        print_table(args, parent, rows, &medians, &targets);
        Ok(())
    }
}

fn targets(medians: &[f64]) -> [Target; 3] {
    let p99_ratio = medians[7] / medians[5];
    [
        (
            format!(">= {TARGET_EVENTS_PER_S:.0} events/s catch-up"),
            medians[0],
            medians[0] >= TARGET_EVENTS_PER_S,
        ),
        (
            "catch-up >= 1/2 of the raw read rate".to_string(),
            medians[2],
            medians[2] >= TARGET_SHARE_OF_READ,
        ),
        (
            "read p99 during swap <= 2x before".to_string(),
            p99_ratio,
            p99_ratio <= TARGET_SWAP_P99_RATIO,
        ),
    ]
}

fn print_json(
    args: &ProjectionBenchArgs,
    rows: &[Row],
    medians: &[f64],
    targets: &[Target],
) -> anyhow::Result<()> {
    let (model, cpus, memory) = stats::machine();
    let out = json!({
        "machine": { "cpu": model, "cpus": cpus, "memory": memory },
        "config": { "events": args.events, "accounts": args.accounts, "runs": args.runs, "readers": args.readers, "batch": args.tuning.projection_batch },
        "median": LABELS.iter().zip(medians).map(|((k, _), m)| (k.to_string(), json!(m))).collect::<serde_json::Map<_, _>>(),
        "runs": rows.iter().map(|r| LABELS.iter().zip(r).map(|((k, _), v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "targets": targets.iter().map(|(what, value, met)| json!({"target": what, "value": value, "met": met})).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn print_table(
    args: &ProjectionBenchArgs,
    parent: &Path,
    rows: &[Row],
    medians: &[f64],
    targets: &[Target],
) {
    let (model, cpus, memory) = stats::machine();
    println!();
    println!(
        "kiln bench-projection: {} events over {} accounts, batch {}, {} reader(s), {} run(s)",
        args.events, args.accounts, args.tuning.projection_batch, args.readers, args.runs
    );
    println!(
        "machine: {model}, {cpus} CPUs, {memory}; database in {}",
        parent.display()
    );
    println!();
    let width = LABELS.iter().map(|(_, l)| l.len()).max().unwrap_or(0);
    let mut header = format!("{:width$}  {:>10}", "", "median");
    for i in 1..=rows.len() {
        header.push_str(&format!("  {:>10}", format!("run {i}")));
    }
    println!("{header}");
    for (i, (_, label)) in LABELS.iter().enumerate() {
        let mut line = format!("{label:width$}  {:>10.3}", medians[i]);
        for r in rows {
            line.push_str(&format!("  {:>10.3}", r[i]));
        }
        println!("{line}");
    }
    println!();
    println!("targets (medians):");
    for (what, value, met) in targets {
        println!(
            "  {what:42} {value:>10.3}  {}",
            if *met { "met" } else { "NOT met" }
        );
    }
}
