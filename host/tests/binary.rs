//! The `kiln` binary as an operator runs it: start, serve, stop on SIGTERM,
//! survive SIGKILL without losing an acknowledged command.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any error"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

struct Kiln {
    child: Child,
    base: String,
}

/// A test that fails must not leave its host running.
impl Drop for Kiln {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Start `kiln serve` on a free port with the example plugins (the binary's
/// default) and wait for its "listening" line.
fn start(db: &Path) -> Kiln {
    start_with(db, None, &[])
}

/// The same with a plugin directory and extra environment.
fn start_with(db: &Path, plugins: Option<&Path>, env: &[(&str, &str)]) -> Kiln {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .env("KILN_LOG", "warn");
    if let Some(dir) = plugins {
        command.arg("--plugins").arg(dir);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kiln starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read listening line");
    let base = line
        .trim()
        .strip_prefix("kiln listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Kiln { child, base }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

async fn post(client: &reqwest::Client, base: &str, id: &str, body: Value) -> Option<u16> {
    let r = client
        .post(format!("{base}/commands/bank_account/{id}"))
        .json(&body)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    // Only a fully read answer counts as acknowledged.
    r.bytes().await.ok()?;
    Some(status)
}

const ACCOUNTS: usize = 8;

/// Open accounts, then deposit 1 at a time from many tasks until stopped;
/// returns the number of acknowledged (200) deposits.
async fn load_until_killed(base: &str, kill: impl FnOnce()) -> u64 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for a in 0..ACCOUNTS {
        assert_eq!(
            post(
                &client,
                base,
                &a.to_string(),
                json!({"type": "Open", "data": {"owner": "o"}})
            )
            .await,
            Some(200)
        );
    }
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..32 {
        let (client, base, acked) = (client.clone(), base.to_string(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let id = ((t + i) % ACCOUNTS).to_string();
                match post(
                    &client,
                    &base,
                    &id,
                    json!({"type": "Deposit", "data": {"amount": 1}}),
                )
                .await
                {
                    Some(200) => {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(other) => panic!("unexpected status {other}"),
                    None => return,
                }
            }
        }));
    }
    // Let the load run, then stop the host under it.
    while acked.load(Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill();
    for t in tasks {
        t.await.unwrap();
    }
    acked.load(Ordering::SeqCst)
}

async fn durable_deposits(base: &str) -> u64 {
    let client = reqwest::Client::new();
    let mut total = 0;
    for a in 0..ACCOUNTS {
        let s: Value = client
            .get(format!("{base}/streams/bank_account-{a}/state"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        total += s["state"]["balance"].as_u64().unwrap();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_command() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    let mut kiln = start(&db);
    let pid_child = &mut kiln.child;
    let acked = load_until_killed(&kiln.base, || pid_child.kill().expect("SIGKILL")).await;
    kiln.child.wait().unwrap();
    let mut again = start(&db);
    let durable = durable_deposits(&again.base).await;
    // Every acknowledged deposit is there; at most the in-flight ones extra.
    assert!(
        durable >= acked,
        "lost acknowledged commands: {durable} durable < {acked} acknowledged"
    );
    assert!(
        durable <= acked + 32,
        "{durable} durable, {acked} acknowledged, 32 in flight at most"
    );
    signal(&again.child, "TERM");
    assert!(again.child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_commands_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    let mut kiln = start(&db);
    let child = &kiln.child;
    let acked = load_until_killed(&kiln.base, || signal(child, "TERM")).await;
    let status = kiln.child.wait().unwrap();
    assert!(status.success(), "graceful exit, got {status}");
    let mut again = start(&db);
    let durable = durable_deposits(&again.base).await;
    assert!(
        durable >= acked,
        "lost acknowledged commands: {durable} < {acked}"
    );
    // In-flight commands were finished and answered, not cut off: nothing was
    // committed without its client hearing of it... except answers racing
    // the socket close, which are at most one per connection.
    assert!(
        durable <= acked + 32,
        "{durable} durable, {acked} acknowledged"
    );
    signal(&again.child, "TERM");
    assert!(again.child.wait().unwrap().success());
}

/// A large plugin compiling in the background (here the JavaScript
/// `bank_account`, 10+ s to compile, with an empty compile cache) does not
/// hold up the start, nor the exit: SIGTERM stops the host at once, well
/// before the compile would have finished.
#[test]
fn sigterm_does_not_wait_for_a_background_compile() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(
        kiln_plugin_artifacts::bank_account_js(),
        plugins.join("bank_account.wasm"),
    )
    .unwrap();
    let mut kiln = start_with(&dir.path().join("kiln.db"), Some(&plugins), &[]);
    // Listening (the start did not wait); give the compile time to begin.
    std::thread::sleep(Duration::from_millis(300));
    let stopped = std::time::Instant::now();
    signal(&kiln.child, "TERM");
    let status = kiln.child.wait().unwrap();
    assert!(status.success(), "graceful exit, got {status}");
    let waited = stopped.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "the exit waited {waited:?} for the compile"
    );
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[test]
fn flags_are_readable_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve"])
        .env("KILN_LISTEN", "also-not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("also-not-an-address"), "{stderr}");
}

async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// The issue's crash test: events are appended, `account_balances` is added
/// and killed with SIGKILL while it catches up (tiny batches make that take
/// a while), then restarted; every balance and the totals must match the
/// events exactly: nothing counted twice, nothing missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_resumes_exactly_once_after_sigkill_mid_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(
        kiln_plugin_artifacts::BANK_ACCOUNT,
        plugins.join("bank_account.wasm"),
    )
    .unwrap();

    // 1. Events only: 8 accounts, 1,600 deposits and withdrawals.
    let first = start_with(&db, Some(&plugins), &[]);
    let client = reqwest::Client::new();
    let mut expected = [0i64; ACCOUNTS];
    for a in 0..ACCOUNTS {
        let r = post(
            &client,
            &first.base,
            &a.to_string(),
            json!({"type": "Open", "data": {"owner": format!("o{a}")}}),
        )
        .await;
        assert_eq!(r, Some(200));
    }
    let mut tasks = Vec::new();
    for a in 0..ACCOUNTS {
        let (client, base) = (client.clone(), first.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut balance = 0i64;
            for i in 0..200i64 {
                let (kind, amount) = if i % 5 == 4 {
                    ("Withdraw", 3)
                } else {
                    ("Deposit", i % 7 + 1)
                };
                let r = post(
                    &client,
                    &base,
                    &a.to_string(),
                    json!({"type": kind, "data": {"amount": amount}}),
                )
                .await;
                assert_eq!(r, Some(200));
                balance += if kind == "Deposit" { amount } else { -amount };
            }
            balance
        }));
    }
    for (a, t) in tasks.into_iter().enumerate() {
        expected[a] = t.await.unwrap();
    }
    let mut first = first;
    signal(&first.child, "TERM");
    assert!(first.child.wait().unwrap().success());

    // 2. Add the projection and kill the host while it catches up.
    std::fs::copy(
        kiln_plugin_artifacts::ACCOUNT_BALANCES,
        plugins.join("account_balances.wasm"),
    )
    .unwrap();
    let mut second = start_with(&db, Some(&plugins), &[("KILN_PROJECTION_BATCH", "2")]);
    let mut seen = Value::Null;
    for _ in 0..5000 {
        seen = get_json(
            &client,
            format!("{}/projections/account_balances", second.base),
        )
        .await;
        if seen["position"].as_u64().unwrap_or(0) > 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    second.child.kill().expect("SIGKILL");
    second.child.wait().unwrap();
    let (position, head) = (
        seen["position"].as_u64().unwrap(),
        seen["head"].as_u64().unwrap(),
    );
    assert!(
        position > 0 && position < head,
        "the kill must land mid catch-up: position {position}, head {head}"
    );

    // 3. Restart: it resumes from its checkpoint and ends exactly right.
    let mut third = start_with(&db, Some(&plugins), &[]);
    let mut status = Value::Null;
    for _ in 0..2000 {
        status = get_json(
            &client,
            format!("{}/projections/account_balances", third.base),
        )
        .await;
        if status["lag"] == 0 && status["position"].as_u64() == Some(head) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status["lag"], 0, "{status}");
    assert_eq!(status["generation"], 1, "resumed, not rebuilt: {status}");
    for (a, balance) in expected.iter().enumerate() {
        let row = get_json(
            &client,
            format!(
                "{}/projections/account_balances/rows/account-{a}",
                third.base
            ),
        )
        .await;
        assert_eq!(row["balance"], *balance, "account {a}: {row}");
        assert_eq!(row["owner"], format!("o{a}"));
    }
    let totals = get_json(
        &client,
        format!("{}/projections/account_balances/rows/_totals", third.base),
    )
    .await;
    assert_eq!(
        totals,
        json!({"open_accounts": ACCOUNTS, "total_balance": expected.iter().sum::<i64>()})
    );
    signal(&third.child, "TERM");
    assert!(third.child.wait().unwrap().success());
}

fn verify(db: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["verify", "--db"])
        .arg(db)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_an_untouched_log_and_names_a_changed_event() {
    use sqlx::Connection;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    let mut kiln = start(&db);
    let client = reqwest::Client::new();
    post(
        &client,
        &kiln.base,
        "v",
        json!({"type": "Open", "data": {"owner": "o"}}),
    )
    .await;
    for _ in 0..5 {
        post(
            &client,
            &kiln.base,
            "v",
            json!({"type": "Deposit", "data": {"amount": 2}}),
        )
        .await;
    }
    signal(&kiln.child, "TERM");
    assert!(kiln.child.wait().unwrap().success());

    let out = verify(&db);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("all 6 events is intact"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("verified 6 of 6"));

    let url = format!("sqlite://{}", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(r#"UPDATE events SET data = '{"amount":2000}' WHERE position = 4"#)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let out = verify(&db);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("BROKEN at position 4"), "{stdout}");

    let missing = verify(&dir.path().join("nope.db"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no database"));
}

/// `kiln verify` with `args` on the database at `url`.
fn verify_url(url: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["verify", "--db", url])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), stdout)
}

/// Five events, the head hash `kiln verify` prints; then the last event
/// deleted behind the store's back fails the check, and `--expect-head`
/// tells the right head from a wrong one.
async fn verify_truncation_and_expected_head(url: &str, delete_last: impl AsyncFnOnce()) {
    use kiln::store::{AppendRequest, ExpectedVersion, NewEvent};
    let store = kiln::store::open(url, Default::default(), Default::default())
        .await
        .unwrap();
    for n in 0..5 {
        let event = NewEvent {
            event_type: "Happened".into(),
            schema: 1,
            data: format!(r#"{{"n":{n}}}"#),
            metadata: "{}".into(),
        };
        store
            .append(AppendRequest {
                stream_id: "s-1".into(),
                expected: ExpectedVersion::Any,
                events: vec![event],
                idempotency: None,
            })
            .await
            .unwrap();
    }
    store.close().await;
    let (code, stdout) = verify_url(url, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    let head = stdout
        .split("head: position 5 hash ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no head hash in: {stdout}"))
        .to_string();
    assert_eq!(head.len(), 64, "{stdout}");
    let (code, stdout) = verify_url(url, &["--expect-head", &head]);
    assert_eq!(code, Some(0), "{stdout}");
    let (code, stdout) = verify_url(url, &["--expect-head", &format!("5:{head}")]);
    assert_eq!(code, Some(0), "{stdout}");
    let (code, stdout) = verify_url(url, &["--expect-head", &"0".repeat(64)]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("--expect-head"), "{stdout}");
    let (code, stdout) = verify_url(url, &["--json"]);
    assert_eq!(code, Some(0), "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["head_hash"], json!(head));

    delete_last().await;
    let (code, stdout) = verify_url(url, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("BROKEN at position 5"), "{stdout}");
    assert!(stdout.contains("events removed at the end"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_on_a_truncated_sqlite_log_and_checks_an_expected_head() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
    verify_truncation_and_expected_head(&url, async || {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM events WHERE position = 5")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_on_a_truncated_postgres_log_and_checks_an_expected_head() {
    use sqlx::Connection;
    let Some(db) = kiln_testkit::ScratchDatabase::for_test("verify_truncated_postgres_log").await
    else {
        return;
    };
    verify_truncation_and_expected_head(db.url(), async || {
        let mut conn = sqlx::PgConnection::connect_with(&db.connect_options())
            .await
            .unwrap();
        sqlx::query("DELETE FROM events WHERE position = 5")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    })
    .await;
}

async fn post_to(client: &reqwest::Client, url: String, body: Value) -> Option<(u16, Value)> {
    let r = client.post(url).json(&body).send().await.ok()?;
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Some((status, body))
}

/// Transfers between accounts through the `transfer_saga`, with the host
/// killed (SIGKILL) three times while sagas run: after the restarts every
/// transfer ends completed or failed, every balance is what the transfers'
/// outcomes say, and the total is unchanged. A command lost or applied
/// twice would break one of those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_survive_sigkill_with_every_transfer_applied_exactly_once() {
    const OPENING: i64 = 1_000;
    const ACCOUNTS: usize = 6;
    const PER_WAVE: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("kiln.db");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut kiln = start(&db);
    for a in 0..ACCOUNTS {
        let url = format!("{}/commands/bank_account/acct{a}", kiln.base);
        let open = json!({"type": "Open", "data": {"owner": "o"}});
        assert_eq!(post_to(&client, url.clone(), open).await.unwrap().0, 200);
        let deposit = json!({"type": "Deposit", "data": {"amount": OPENING}});
        assert_eq!(post_to(&client, url, deposit).await.unwrap().0, 200);
    }
    // Some transfers are refused (too large): they must fail cleanly too.
    let mut requested: Vec<(String, usize, usize, i64)> = Vec::new();
    let mut interrupted = 0;
    for wave in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..PER_WAVE {
            let n = wave * PER_WAVE + i;
            let (from, to) = (n % ACCOUNTS, (n * 7 + 1) % ACCOUNTS);
            let to = if to == from { (to + 1) % ACCOUNTS } else { to };
            let amount = if n.is_multiple_of(9) {
                5_000
            } else {
                (n % 50 + 1) as i64
            };
            let id = format!("t{n}");
            let url = format!("{}/commands/transfer/{id}", kiln.base);
            let body = json!({"type": "Request", "data": {"from": format!("acct{from}"), "to": format!("acct{to}"), "amount": amount}});
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                (
                    post_to(&client, url, body).await.map(|a| a.0),
                    id,
                    from,
                    to,
                    amount,
                )
            }));
        }
        // Kill while the sagas work on this wave.
        tokio::time::sleep(Duration::from_millis(40 + 60 * wave as u64)).await;
        signal(&kiln.child, "KILL");
        kiln.child.wait().unwrap();
        for task in tasks {
            let (status, id, from, to, amount) = task.await.unwrap();
            // Only an acknowledged request is a transfer; an unanswered one
            // may or may not have been recorded, and is checked below.
            if status == Some(200) {
                requested.push((id, from, to, amount));
            }
        }
        kiln = start(&db);
        // Instances the kill interrupted (the runner may already be at them).
        let status = get_json(&client, format!("{}/sagas/transfer_saga", kiln.base)).await;
        interrupted += status["instances"]["running"].as_u64().unwrap_or(0)
            + status["instances"]["compensating"].as_u64().unwrap_or(0)
            + status["instances"]["outbox"].as_u64().unwrap_or(0);
    }
    assert!(
        interrupted > 0,
        "no kill landed while a saga was running; the test proves nothing"
    );
    // Every transfer recorded (acknowledged or not) must finish.
    let mut balances = [OPENING; ACCOUNTS];
    let mut finished = 0;
    let all_ids: Vec<usize> = (0..3 * PER_WAVE).collect();
    for n in all_ids {
        let id = format!("t{n}");
        let state = get_json(
            &client,
            format!("{}/streams/transfer-{id}/state", kiln.base),
        )
        .await;
        if state.get("error").is_some() {
            assert!(
                !requested.iter().any(|r| r.0 == id),
                "acknowledged transfer {id} is missing: {state}"
            );
            continue;
        }
        // The instance completes once every command it decided is applied.
        let mut instance = Value::Null;
        for _ in 0..600 {
            instance = get_json(&client, format!("{}/sagas/transfer_saga/{id}", kiln.base)).await;
            if instance["status"] == "completed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(instance["status"], "completed", "saga of {id}: {instance}");
        assert_eq!(instance["pending"], json!([]), "{instance}");
        let state = get_json(
            &client,
            format!("{}/streams/transfer-{id}/state", kiln.base),
        )
        .await;
        let data = &state["state"];
        let from: usize = data["from"].as_str().unwrap()[4..].parse().unwrap();
        let to: usize = data["to"].as_str().unwrap()[4..].parse().unwrap();
        let amount = data["amount"].as_i64().unwrap();
        let status = data["status"].as_str().unwrap_or("");
        assert!(
            status == "completed" || status == "failed",
            "transfer {id} did not finish: {state}"
        );
        if status == "completed" {
            balances[from] -= amount;
            balances[to] += amount;
        }
        finished += 1;
    }
    assert!(
        finished >= requested.len(),
        "{finished} < {}",
        requested.len()
    );
    let mut total = 0;
    for (a, expected) in balances.iter().enumerate() {
        let state = get_json(
            &client,
            format!("{}/streams/bank_account-acct{a}/state", kiln.base),
        )
        .await;
        let balance = state["state"]["balance"].as_i64().unwrap();
        assert_eq!(balance, *expected, "account acct{a}: {state}");
        total += balance;
    }
    assert_eq!(total, OPENING * ACCOUNTS as i64);
    signal(&kiln.child, "TERM");
    kiln.child.wait().unwrap();
}

/// The live holder of the lease `name`, as a host's `GET /cluster` says,
/// and whether it is that host.
async fn lease_holder(client: &reqwest::Client, base: &str, name: &str) -> Option<(String, bool)> {
    let cluster = get_json(client, format!("{base}/cluster")).await;
    cluster["leases"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name && l["expired"] == false)
        .map(|l| (l["holder"].as_str().unwrap().to_string(), l["mine"] == true))
}

/// The issue's failover test: three `kiln serve` processes on one
/// PostgreSQL database, commands streaming through two of them, and the one
/// running `account_balances` killed with SIGKILL. Another host takes the
/// projection over within the lease time, and every balance and the totals
/// match the events in the log exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_is_replaced_within_the_lease_time() {
    const TTL_MS: u64 = 1_000;
    const LEASE: &str = "projection:account_balances";
    let Some(db) = kiln_testkit::ScratchDatabase::for_test(
        "a_killed_holder_is_replaced_within_the_lease_time",
    )
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for (file, name) in [
        (kiln_plugin_artifacts::BANK_ACCOUNT, "bank_account"),
        (kiln_plugin_artifacts::ACCOUNT_BALANCES, "account_balances"),
    ] {
        std::fs::copy(file, plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let ttl = TTL_MS.to_string();
    let env = [
        ("KILN_LEASE_TTL_MS", ttl.as_str()),
        ("KILN_COMPILE_CACHE_DIR", dir.path().to_str().unwrap()),
    ];
    let mut hosts: Vec<Kiln> = (0..3)
        .map(|_| start_with(Path::new(db.url()), Some(&plugins), &env))
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Exactly one host runs the projection; every host agrees which.
    let (holder_id, _) = lease_holder(&client, &hosts[0].base, LEASE)
        .await
        .expect("a live lease");
    let mut holder = None;
    for (i, h) in hosts.iter().enumerate() {
        let (id, mine) = lease_holder(&client, &h.base, LEASE).await.unwrap();
        assert_eq!(id, holder_id);
        if mine {
            assert!(holder.is_none(), "two hosts hold the lease");
            holder = Some(i);
        }
    }
    let holder = holder.expect("one host holds the lease");
    let others: Vec<String> = (0..3)
        .filter(|i| *i != holder)
        .map(|i| hosts[i].base.clone())
        .collect();

    // A stream of commands through the two other hosts.
    for a in 0..ACCOUNTS {
        let r = post(
            &client,
            &others[a % 2],
            &a.to_string(),
            json!({"type": "Open", "data": {"owner": format!("o{a}")}}),
        )
        .await;
        assert_eq!(r, Some(200));
    }
    let stop = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for a in 0..ACCOUNTS {
        let (client, base, stop) = (client.clone(), others[a % 2].clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut acked = 0u64;
            while stop.load(Ordering::SeqCst) == 0 {
                let r = post(
                    &client,
                    &base,
                    &a.to_string(),
                    json!({"type": "Deposit", "data": {"amount": 1}}),
                )
                .await;
                assert_eq!(r, Some(200));
                acked += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    hosts[holder].child.kill().expect("SIGKILL");
    hosts[holder].child.wait().unwrap();
    let killed = std::time::Instant::now();

    // Another host takes over within the lease time (plus a renewal round
    // and some slack for a loaded machine).
    let new_holder = loop {
        let mut found = None;
        for base in &others {
            if let Some((id, true)) = lease_holder(&client, base, LEASE).await {
                found = Some(id);
            }
        }
        if let Some(id) = found {
            break id;
        }
        assert!(
            killed.elapsed() < Duration::from_millis(TTL_MS * 3),
            "no host took the projection over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = killed.elapsed();
    assert_ne!(new_holder, holder_id);
    eprintln!("taken over after {} ms", took.as_millis());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(1, Ordering::SeqCst);
    let mut acked = 0;
    for t in load {
        acked += t.await.unwrap();
    }
    assert!(acked > 0);

    // The rows match the events exactly.
    let head = get_json(&client, format!("{}/readyz", others[0])).await["head"]
        .as_u64()
        .unwrap();
    let mut expected = [0i64; ACCOUNTS];
    let mut from = 1;
    loop {
        let page = get_json(
            &client,
            format!("{}/events?from_position={from}&limit=1000", others[0]),
        )
        .await;
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        for e in events {
            if e["type"] == "Deposited" {
                let account: usize = e["stream_id"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("bank_account-")
                    .parse()
                    .unwrap();
                expected[account] += e["data"]["amount"].as_i64().unwrap();
            }
        }
        from = page["next_position"].as_u64().unwrap();
    }
    assert_eq!(expected.iter().sum::<i64>(), acked as i64);
    for base in &others {
        let rows = get_json(
            &client,
            format!(
                "{base}/projections/account_balances/rows?min_position={head}&timeout_ms=20000&limit=100"
            ),
        )
        .await;
        let rows = rows["rows"].as_array().unwrap_or_else(|| panic!("{rows}"));
        for (a, balance) in expected.iter().enumerate() {
            let row = rows
                .iter()
                .find(|r| r["key"] == format!("account-{a}"))
                .unwrap();
            assert_eq!(row["value"]["balance"], *balance, "account {a}");
        }
        let totals = rows.iter().find(|r| r["key"] == "_totals").unwrap();
        assert_eq!(
            totals["value"],
            json!({"open_accounts": ACCOUNTS, "total_balance": expected.iter().sum::<i64>()})
        );
    }
    drop(hosts);
    db.remove().await.unwrap();
}
