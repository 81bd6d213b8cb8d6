//! The report of `kiln-bench bench-plugins`: the first compiles, the
//! median of each figure per build with its ratio to the first build, and
//! every run.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::PluginsBenchArgs;
use crate::stats;

/// The figures of one build in one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Row {
    pub instantiate_us: f64,
    pub handle_us: f64,
    pub apply_per_event_us: f64,
    pub command_unit_us: f64,
    pub commands_per_s: f64,
    pub p99_ms: f64,
    /// NaN when the build has no projection.
    pub projection_events_per_s: f64,
}

/// Each column's JSON key and table label, in the order of [`Row::values`].
const COLUMNS: [(&str, &str); 7] = [
    ("instantiate_us", "instance, µs"),
    ("handle_us", "warm handle, µs"),
    ("apply_per_event_us", "apply/event, µs"),
    ("command_unit_us", "command unit, µs"),
    ("commands_per_s", "commands/s"),
    ("p99_ms", "p99, ms"),
    ("projection_events_per_s", "projection events/s"),
];

impl Row {
    fn values(&self) -> [f64; 7] {
        [
            self.instantiate_us,
            self.handle_us,
            self.apply_per_event_us,
            self.command_unit_us,
            self.commands_per_s,
            self.p99_ms,
            self.projection_events_per_s,
        ]
    }
}

/// The builds, each with its name and directory.
type Builds = [(String, PathBuf)];
/// The first compile of each component: (build, component, seconds).
type Compiles = [(String, String, f64)];

/// Prints the report on stdout, as a table or one JSON object.
pub fn print(
    args: &PluginsBenchArgs,
    builds: &Builds,
    compile_s: &Compiles,
    runs: &[Vec<Row>],
    parent: &Path,
) -> anyhow::Result<()> {
    let medians = medians(builds, runs);
    if args.json {
        print_json(args, builds, compile_s, runs, &medians)
    } else {
        print_table(args, builds, compile_s, runs, parent, &medians);
        Ok(())
    }
}

/// `medians[build][column]`, over the runs that measured it.
fn medians(builds: &Builds, runs: &[Vec<Row>]) -> Vec<[f64; 7]> {
    (0..builds.len())
        .map(|b| {
            std::array::from_fn(|c| {
                let values: Vec<f64> = runs
                    .iter()
                    .map(|r| r[b].values()[c])
                    .filter(|v| !v.is_nan())
                    .collect();
                if values.is_empty() {
                    f64::NAN
                } else {
                    stats::median(&values)
                }
            })
        })
        .collect()
}

fn print_json(
    args: &PluginsBenchArgs,
    builds: &Builds,
    compile_s: &Compiles,
    runs: &[Vec<Row>],
    medians: &[[f64; 7]],
) -> anyhow::Result<()> {
    let (model, cpus, memory) = stats::machine();
    let out = json!({
        "machine": { "cpu": model, "cpus": cpus, "memory": memory },
        "config": {
            "runs": args.runs, "accounts": args.accounts, "commands": args.commands,
            "warmup": args.warmup, "connections": args.connections, "events": args.events,
        },
        "compile_s": compile_s.iter().map(|(b, c, s)| json!({"build": b, "component": c, "seconds": s})).collect::<Vec<_>>(),
        "median": builds.iter().zip(medians).map(|((name, _), m)| {
            (name.clone(), Value::Object(COLUMNS.iter().zip(m).map(|((k, _), v)| (k.to_string(), json!(v))).collect()))
        }).collect::<serde_json::Map<_, _>>(),
        "runs": runs.iter().map(|r| builds.iter().zip(r).map(|((name, _), row)| {
            (name.clone(), Value::Object(COLUMNS.iter().zip(row.values()).map(|((k, _), v)| (k.to_string(), json!(v))).collect()))
        }).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn print_table(
    args: &PluginsBenchArgs,
    builds: &Builds,
    compile_s: &Compiles,
    runs: &[Vec<Row>],
    parent: &Path,
    medians: &[[f64; 7]],
) {
    let (model, cpus, memory) = stats::machine();
    println!();
    println!(
        "kiln bench-plugins: {} deposits ({} warm-up) over {} accounts from {} connections, {} projection events, {} run(s)",
        args.commands, args.warmup, args.accounts, args.connections, args.events, args.runs
    );
    println!(
        "machine: {model}, {cpus} CPUs, {memory}; databases in {}",
        parent.display()
    );
    println!();
    println!("first compile (Cranelift), s:");
    for (build, component, seconds) in compile_s {
        println!("  {build:<12} {component:<18} {seconds:>8.2}");
    }
    println!();
    let width = COLUMNS
        .iter()
        .map(|(_, l)| l.chars().count())
        .max()
        .unwrap_or(0);
    let mut header = format!("{:width$}", "median");
    for (name, _) in builds {
        header.push_str(&format!("  {name:>12}"));
        if name != &builds[0].0 {
            header.push_str(&format!("  {:>10}", format!("/{}", builds[0].0)));
        }
    }
    println!("{header}");
    for (c, (_, label)) in COLUMNS.iter().enumerate() {
        let mut line = format!("{label:width$}");
        for (b, (name, _)) in builds.iter().enumerate() {
            let v = medians[b][c];
            line.push_str(&format!("  {v:>12.2}"));
            if name != &builds[0].0 {
                line.push_str(&format!("  {:>10.2}", v / medians[0][c]));
            }
        }
        println!("{line}");
    }
    println!();
    println!("per run:");
    for (i, run) in runs.iter().enumerate() {
        for ((name, _), row) in builds.iter().zip(run) {
            let values: Vec<String> = row.values().iter().map(|v| format!("{v:.2}")).collect();
            println!("  run {} {name:<12} {}", i + 1, values.join("  "));
        }
    }
}
