//! The figures of one run of `kiln-bench bench`, in the order the table
//! prints them.

use super::{BenchArgs, Measured, raw_batch};
use crate::http::Load;

/// One figure of one run.
#[derive(Debug, Clone)]
pub struct Figure {
    pub key: &'static str,
    pub label: String,
    pub value: f64,
    pub decimals: usize,
}

fn fig(key: &'static str, label: impl Into<String>, value: f64, decimals: usize) -> Figure {
    Figure {
        key,
        label: label.into(),
        value,
        decimals,
    }
}

/// Every figure of a run; those a run could not measure (CPU time off
/// Linux, the `--max-batch` ceiling when it equals the batch) are left out.
pub fn of_run(args: &BenchArgs, m: &Measured) -> Vec<Figure> {
    let d = &m.http.deposits;
    let mut figures = http_figures(d, m.http.opens.per_s());
    figures.extend(http_cpu_figures(d));
    figures.extend(ceiling_figures(args, m));
    figures.extend(ratio_figures(args, m));
    figures.extend(wasm_figures(&m.wasm));
    figures
}

fn http_figures(d: &Load, opens_per_s: f64) -> Vec<Figure> {
    vec![
        fig(
            "http_commands_per_s",
            "HTTP Deposit, commands/s",
            d.per_s(),
            0,
        ),
        fig("http_p50_ms", "  latency p50, ms", d.ms(50.0), 2),
        fig("http_p90_ms", "  latency p90, ms", d.ms(90.0), 2),
        fig("http_p99_ms", "  latency p99, ms", d.ms(99.0), 2),
        fig("http_max_ms", "  latency max, ms", d.ms(100.0), 2),
        fig("http_errors", "  errors (non-200)", d.errors as f64, 0),
        fig(
            "http_connections",
            "  server connections seen",
            d.connections_seen.map_or(f64::NAN, |c| c as f64),
            0,
        ),
        fig(
            "http_events_per_commit",
            "  events per commit (upper bound)",
            d.ok as f64 / d.commits_seen.max(1) as f64,
            1,
        ),
        fig(
            "http_open_per_s",
            "HTTP Open (new stream), commands/s",
            opens_per_s,
            0,
        ),
    ]
}

/// Where the deposits' CPU time went, per command.
fn http_cpu_figures(d: &Load) -> Vec<Figure> {
    let Some(cpu) = &d.cpu else {
        return Vec::new();
    };
    let wall = d.wall.as_secs_f64().max(1e-9);
    let per_cmd = |s: f64| s * 1e6 / d.ok.max(1) as f64;
    vec![
        fig(
            "http_cpu_cores",
            "  CPU busy during deposits, cores",
            cpu.total_s / wall,
            2,
        ),
        fig(
            "http_cpu_us_per_command",
            "  CPU per command, µs",
            per_cmd(cpu.total_s),
            1,
        ),
        fig(
            "http_cpu_client_us",
            "    load generator, µs",
            per_cmd(cpu.group("client")),
            1,
        ),
        fig(
            "http_cpu_server_us",
            "    host tokio + wasm, µs",
            per_cmd(cpu.group("server")),
            1,
        ),
        fig(
            "http_cpu_sqlite_us",
            "    SQLite threads, µs",
            per_cmd(cpu.group("sqlite")),
            1,
        ),
        fig(
            "http_cpu_other_us",
            "    other, µs",
            per_cmd(cpu.group("other")),
            1,
        ),
    ]
}

/// The raw SQL ceilings and Kiln's store.
fn ceiling_figures(args: &BenchArgs, m: &Measured) -> Vec<Figure> {
    let batch = raw_batch(args);
    let mut figures = vec![
        fig(
            "raw_sql_per_s",
            format!("raw SQL INSERT, {batch}/txn, events/s"),
            m.sql.per_s(),
            0,
        ),
        fig(
            "raw_sql_multi_row_per_s",
            format!("raw SQL multi-row INSERT, {batch}/txn, events/s"),
            m.sql_multi.per_s(),
            0,
        ),
    ];
    if let Some(max) = &m.sql_max {
        figures.push(fig(
            "raw_sql_max_batch_per_s",
            format!("raw SQL INSERT, {}/txn, events/s", args.tuning.max_batch),
            max.per_s(),
            0,
        ));
    }
    let store = &m.store;
    figures.extend([
        fig(
            "store_per_s",
            "Kiln store append, events/s",
            store.per_s(),
            0,
        ),
        fig("store_p50_ms", "  append p50, ms", store.ms(50.0), 2),
        fig("store_p99_ms", "  append p99, ms", store.ms(99.0), 2),
    ]);
    if let Some(cpu) = &store.cpu {
        figures.push(fig(
            "store_cpu_us_per_event",
            "  CPU per append, µs",
            cpu.total_s * 1e6 / store.events.max(1) as f64,
            1,
        ));
    }
    if let Some(cpu) = &m.sql.cpu {
        figures.push(fig(
            "raw_sql_cpu_us_per_event",
            "raw SQL CPU per event, µs",
            cpu.total_s * 1e6 / m.sql.events.max(1) as f64,
            1,
        ));
    }
    figures
}

/// HTTP against each ceiling, and the store against raw SQL.
fn ratio_figures(args: &BenchArgs, m: &Measured) -> Vec<Figure> {
    let batch = raw_batch(args);
    let http_rate = m.http.deposits.per_s();
    let mut figures = vec![
        fig(
            "ratio_http_raw_sql_multi_row",
            format!("HTTP / raw SQL multi-row ({batch}/txn)"),
            http_rate / m.sql_multi.per_s(),
            3,
        ),
        fig(
            "ratio_http_raw_sql",
            format!("HTTP / raw SQL ({batch}/txn)"),
            http_rate / m.sql.per_s(),
            3,
        ),
    ];
    if let Some(max) = &m.sql_max {
        figures.push(fig(
            "ratio_http_raw_sql_max_batch",
            format!("HTTP / raw SQL ({}/txn)", args.tuning.max_batch),
            http_rate / max.per_s(),
            3,
        ));
    }
    figures.extend([
        fig(
            "ratio_http_store",
            "HTTP / Kiln store",
            http_rate / m.store.per_s(),
            3,
        ),
        fig(
            "ratio_store_raw_sql",
            format!("Kiln store / raw SQL ({batch}/txn)"),
            m.store.per_s() / m.sql.per_s(),
            3,
        ),
    ]);
    figures
}

fn wasm_figures(w: &crate::wasm::WasmCost) -> Vec<Figure> {
    vec![
        fig(
            "wasm_instantiate_us",
            "wasm instantiate, µs",
            w.instantiate_us,
            1,
        ),
        fig("wasm_handle_us", "wasm handle (warm), µs", w.handle_us, 2),
        fig(
            "wasm_apply_event_us",
            "wasm apply, per event of 100, µs",
            w.apply_per_event_us,
            2,
        ),
        fig(
            "wasm_command_unit_us",
            "wasm per command (inst.+apply+handle), µs",
            w.command_unit_us,
            1,
        ),
    ]
}
