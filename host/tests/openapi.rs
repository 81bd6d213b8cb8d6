//! The OpenAPI document against the server it describes: schemathesis, a
//! property-based API tester (PyPI, pinned in `tests/openapi/requirements.txt`),
//! generates requests from `GET /openapi.json`, valid and invalid, sends
//! them to a live `kiln serve` and runs every check it has on the answers
//! (statuses, content types, bodies and headers as documented, valid input
//! accepted, invalid input refused, admin routes refusing requests without
//! the token, no 5xx). Any failure fails this test, with schemathesis's
//! report and a command to reproduce it.
//!
//! The test installs schemathesis itself, into a virtualenv under
//! `<target>/schemathesis/venv` made with the machine's `python3` (again
//! only when the requirements change), so `cargo test` stays the only
//! command. `tests/openapi/schemathesis.toml` says what the document cannot
//! (names to aim at, the admin token, answers a schema cannot predict), and
//! `tests/openapi/kiln_hooks.py` serializes `application/wasm` bodies.
//!
//! Bounded: `KILN_SCHEMATHESIS_EXAMPLES` examples per operation (default
//! 20), one worker, and the run is stopped and failed after
//! `KILN_SCHEMATHESIS_TIMEOUT_SECS` (default 240). The seed is fixed
//! (`KILN_SCHEMATHESIS_SEED` changes it) so that a failure in CI can be
//! reproduced.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any error"
)]

use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openapi");
const ADMIN_TOKEN: &str = "openapi-test-admin-token";

/// A `kiln serve` child, killed when the test ends however it ends.
struct Kiln {
    child: Child,
    base: String,
}

impl Drop for Kiln {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The debug binary on a fresh SQLite file, the example plugins (its
/// default), an admin token, a free loopback port.
fn serve(dir: &Path) -> Kiln {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.join("kiln.db"))
        .env("KILN_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("KILN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kiln starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    let base = line
        .trim()
        .strip_prefix("kiln listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Kiln { child, base }
}

/// Wait for the plugins, then give the generated requests something to
/// find: accounts and an execution under the names the configuration's
/// dictionaries hold.
async fn seed(base: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "kiln never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (aggregate, id, body) in [
        (
            "bank_account",
            "a1",
            json!({"type": "Open", "data": {"owner": "ann", "overdraft_limit": 10}}),
        ),
        (
            "bank_account",
            "a1",
            json!({"type": "Deposit", "data": {"amount": 50}}),
        ),
        (
            "bank_account",
            "a2",
            json!({"type": "Open", "data": {"owner": "bob"}}),
        ),
        ("workflow_execution", "w1", json!({"type": "Start"})),
    ] {
        let answer = client
            .post(format!("{base}/commands/{aggregate}/{id}"))
            .json(&body)
            .send()
            .await
            .expect("seed command");
        assert!(
            answer.status().is_success(),
            "seed {aggregate}/{id}: {}",
            answer.status()
        );
    }
}

/// `<target>`: the binary is `<target>/<profile>/kiln`.
fn target_dir() -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_kiln"));
    exe.ancestors().nth(2).expect("target dir").to_path_buf()
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The virtualenv's `schemathesis`, installed from the requirements unless
/// the installed one is from the same file. A file lock keeps two test
/// processes on one target from installing at once.
fn schemathesis() -> PathBuf {
    let root = target_dir().join("schemathesis");
    fs::create_dir_all(&root).expect("create <target>/schemathesis");
    let lock = File::create(root.join("install.lock")).expect("lock file");
    lock.lock().expect("lock");
    let venv = root.join("venv");
    let python = venv.join("bin/python");
    let requirements = Path::new(DIR).join("requirements.txt");
    let mut hasher = DefaultHasher::new();
    fs::read(&requirements)
        .expect("requirements")
        .hash(&mut hasher);
    let wanted = format!("{:016x}", hasher.finish());
    let stamp = venv.join(".installed");
    if !(python.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted)) {
        if !python.is_file() {
            run(
                Command::new("python3").args(["-m", "venv"]).arg(&venv),
                "creating the schemathesis virtualenv (python3 -m venv)",
            );
        }
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg("--cache-dir")
                .arg(root.join("pip-cache"))
                .arg("-r")
                .arg(&requirements),
            "installing schemathesis (pip install -r host/tests/openapi/requirements.txt)",
        );
        fs::write(&stamp, &wanted).expect("write the install stamp");
    }
    venv.join("bin/schemathesis")
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_server_as_its_openapi_document_describes_it() {
    let schemathesis = tokio::task::spawn_blocking(schemathesis)
        .await
        .expect("install");
    let dir = tempfile::tempdir().expect("temp dir");
    let kiln = serve(dir.path());
    seed(&kiln.base).await;

    let examples: u32 = setting("KILN_SCHEMATHESIS_EXAMPLES", 20);
    let seed: u64 = setting("KILN_SCHEMATHESIS_SEED", 20_261_206);
    let limit = Duration::from_secs(setting("KILN_SCHEMATHESIS_TIMEOUT_SECS", 240));
    let mut child = Command::new(&schemathesis)
        .arg("--config-file")
        .arg(Path::new(DIR).join("schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", kiln.base))
        .args(["--checks", "all", "--workers", "1", "--no-color"])
        .args(["--generation-database", "none"])
        .arg(format!("--max-examples={examples}"))
        .arg(format!("--seed={seed}"))
        .current_dir(dir.path())
        .env("PYTHONPATH", DIR)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("KILN_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("COLUMNS", "120")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("schemathesis starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let report = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    println!("{report}");
    let status = status
        .unwrap_or_else(|| panic!("schemathesis ran past {limit:?} and was stopped:\n{report}"));
    assert!(
        status.success(),
        "schemathesis found the server disagreeing with its document ({status}); \
         reproduce with KILN_SCHEMATHESIS_SEED={seed}:\n{report}"
    );
    let (selected, total, tested) = operations(&report);
    assert!(
        selected == total && tested == total && total > 0,
        "schemathesis tested every operation:\n{report}"
    );
}

/// `Selected: S/T` and `Tested: N` of the report's summary.
fn operations(report: &str) -> (usize, usize, usize) {
    let value = |label: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {label:?} in the report:\n{report}"))
    };
    let (selected, total) = value("Selected:").split_once('/').expect("S/T");
    let number = |s: &str| s.trim().parse().expect("a number");
    (number(selected), number(total), number(value("Tested:")))
}
