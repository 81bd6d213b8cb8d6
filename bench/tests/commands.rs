//! Every benchmark command of `kiln-bench` runs end to end on a small load
//! and reports its figures. The figures themselves are not judged (a test
//! machine's speed says nothing), only that each phase ran and measured
//! something.

use std::process::Command;

use serde_json::Value;

/// Runs `kiln-bench ARGS`, asserts it succeeded, and returns its stdout.
fn kiln_bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-bench"))
        .args(args)
        .env("KILN_LOG", "warn")
        .output()
        .expect("kiln-bench starts");
    assert!(
        out.status.success(),
        "kiln-bench {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kiln-bench prints UTF-8")
}

fn kiln_bench_json(args: &[&str]) -> Value {
    let stdout = kiln_bench(args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Asserts that each of `keys` of `object` is a positive number.
fn assert_positive(object: &Value, keys: &[&str]) {
    for key in keys {
        let value = object[*key].as_f64();
        assert!(
            value.is_some_and(|v| v > 0.0),
            "{key} is {} in {object}",
            object[*key]
        );
    }
}

#[test]
fn help_lists_every_benchmark() {
    let help = kiln_bench(&["--help"]);
    for command in [
        "bench",
        "bench-projection",
        "bench-saga",
        "bench-plugins",
        "bench-cluster",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "{command} missing from:\n{help}"
        );
    }
}

#[test]
fn bench_measures_http_the_ceilings_and_wasm() {
    let out = kiln_bench_json(&[
        "bench",
        "--accounts",
        "20",
        "--connections",
        "4",
        "--commands",
        "200",
        "--warmup",
        "20",
        "--runs",
        "1",
        "--json",
    ]);
    let median = &out["median"];
    assert_positive(
        median,
        &[
            "http_commands_per_s",
            "http_open_per_s",
            "raw_sql_per_s",
            "raw_sql_multi_row_per_s",
            "raw_sql_max_batch_per_s",
            "store_per_s",
            "ratio_http_raw_sql_multi_row",
            "wasm_instantiate_us",
            "wasm_handle_us",
            "wasm_command_unit_us",
        ],
    );
    assert_eq!(median["http_errors"].as_f64(), Some(0.0));
    assert_eq!(out["config"]["raw_sql_batch"], 4);
    assert_eq!(out["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(out["targets"].as_array().map(Vec::len), Some(3));
}

#[test]
fn bench_projection_catches_up_and_swaps() {
    let out = kiln_bench_json(&[
        "bench-projection",
        "--events",
        "2000",
        "--accounts",
        "50",
        "--runs",
        "1",
        "--readers",
        "1",
        "--baseline-secs",
        "1",
        "--json",
    ]);
    assert_positive(
        &out["median"],
        &[
            "catch_up_events_per_s",
            "raw_read_events_per_s",
            "swap_s",
            "read_p99_ms_before",
            "read_p99_ms_during_swap",
        ],
    );
}

#[test]
fn bench_saga_measures_both_phases() {
    let out = kiln_bench(&[
        "bench-saga",
        "--clients",
        "2",
        "--transfers",
        "3",
        "--runs",
        "1",
    ]);
    for row in ["| plain: ", "| saga: ", "| saga overhead per transfer"] {
        assert!(out.contains(row), "{row:?} missing from:\n{out}");
    }
}

#[test]
fn bench_plugins_measures_a_build() {
    let rust = format!("rust={}", kiln_plugin_artifacts::EXAMPLES_DIR);
    let out = kiln_bench_json(&[
        "bench-plugins",
        "--build",
        &rust,
        "--runs",
        "1",
        "--accounts",
        "20",
        "--commands",
        "100",
        "--warmup",
        "10",
        "--connections",
        "4",
        "--events",
        "500",
        "--json",
    ]);
    assert_positive(
        &out["median"]["rust"],
        &[
            "instantiate_us",
            "handle_us",
            "command_unit_us",
            "commands_per_s",
            "projection_events_per_s",
        ],
    );
}

/// Needs a PostgreSQL server (`source .ci/postgres.sh`); skipped without
/// one unless `KILN_REQUIRE_POSTGRES=1`.
#[test]
fn bench_cluster_measures_every_phase() {
    let Ok(url) = std::env::var("KILN_TEST_DATABASE_URL") else {
        assert_ne!(
            std::env::var("KILN_REQUIRE_POSTGRES").as_deref(),
            Ok("1"),
            "KILN_REQUIRE_POSTGRES=1 but KILN_TEST_DATABASE_URL is not set"
        );
        eprintln!("skipped: KILN_TEST_DATABASE_URL is not set");
        return;
    };
    let out = kiln_bench_json(&[
        "bench-cluster",
        "--db",
        &url,
        "--hosts",
        "1,2",
        "--accounts",
        "20",
        "--commands",
        "100",
        "--warmup",
        "10",
        "--connections",
        "4",
        "--runs",
        "1",
        "--json",
    ]);
    let phases = out["median"].as_array().expect("phases");
    assert_eq!(phases.len(), 4, "sqlite, 1 host, 2 hosts, ceiling: {out}");
    for phase in phases {
        assert_positive(phase, &["per_s"]);
    }
}
