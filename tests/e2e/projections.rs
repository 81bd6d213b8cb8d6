//! Projections over HTTP: rows and totals that match the events,
//! read-your-writes, paging, status, poison events, admin routes, and the
//! plugin lifecycle (hot swap under load, shadow diff and promote,
//! history and rollback, rebuild).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, Answer, TestHost, artifacts, cmd};

pub(crate) const BALANCES: &str = "account_balances";

pub(crate) async fn open(host: &TestHost, id: &str, owner: &str) -> Answer {
    let a = host
        .command("bank_account", id, cmd("Open", json!({ "owner": owner })))
        .await;
    a.expect(200, "");
    a
}

pub(crate) async fn deposit(host: &TestHost, id: &str, amount: i64) -> Answer {
    let a = host
        .command(
            "bank_account",
            id,
            cmd("Deposit", json!({ "amount": amount })),
        )
        .await;
    a.expect(200, "");
    a
}

pub(crate) async fn withdraw(host: &TestHost, id: &str, amount: i64) -> Answer {
    let a = host
        .command(
            "bank_account",
            id,
            cmd("Withdraw", json!({ "amount": amount })),
        )
        .await;
    a.expect(200, "");
    a
}

pub(crate) fn position(a: &Answer) -> u64 {
    a.body["position"].as_u64().expect("position")
}

/// A row, waiting until the projection has processed `min_position`.
pub(crate) async fn row_at(
    host: &TestHost,
    projection: &str,
    key: &str,
    min_position: u64,
) -> Answer {
    host.get(&format!(
        "/projections/{projection}/rows/{key}?min_position={min_position}&timeout_ms=10000"
    ))
    .await
}

pub(crate) async fn head(host: &TestHost) -> u64 {
    host.get("/readyz").await.body["head"]
        .as_u64()
        .expect("head")
}

/// Poll the status until `check` holds (at most 20 s).
pub(crate) async fn wait_status(
    host: &TestHost,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..2000 {
        let a = host.get(&format!("/projections/{name}")).await;
        if a.status == 200 && check(&a.body) {
            return a.body;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = host.get(&format!("/projections/{name}")).await;
    panic!(
        "projection {name} never reached: {what}; last status {}",
        last.body
    );
}

pub(crate) fn admin(host: &TestHost, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let _ = host;
    req.bearer_auth(ADMIN_TOKEN)
}

pub(crate) async fn deploy(host: &TestHost, name: &str, file: &str, mode: &str) -> Answer {
    let bytes = std::fs::read(file).expect("component");
    let a = host
        .send(admin(
            host,
            host.client
                .put(host.url(&format!("/plugins/{name}?mode={mode}")))
                .header("content-type", "application/wasm")
                .body(bytes),
        ))
        .await;
    a.expect(200, "");
    a
}

#[tokio::test]
async fn balances_and_totals_match_the_events_and_reads_see_their_writes() {
    let mut host = TestHost::start().await;
    open(&host, "1", "ann").await;
    open(&host, "2", "bob").await;
    deposit(&host, "1", 100).await;
    deposit(&host, "2", 40).await;
    let last = withdraw(&host, "1", 30).await;
    // Read-your-writes: the read waits for the command's position.
    let a = row_at(&host, BALANCES, "account-1", position(&last)).await;
    a.expect(200, "");
    assert_eq!(
        a.body,
        json!({"owner": "ann", "balance": 70, "status": "open"})
    );
    let totals = row_at(&host, BALANCES, "_totals", position(&last)).await;
    assert_eq!(
        totals.body,
        json!({"open_accounts": 2, "total_balance": 110})
    );

    // Closing an account moves the count, not the sum.
    withdraw(&host, "2", 40).await;
    let closed = host
        .command("bank_account", "2", cmd("Close", json!({})))
        .await;
    closed.expect(200, "");
    let p = position(&closed);
    let row = row_at(&host, BALANCES, "account-2", p).await;
    assert_eq!(row.body["status"], "closed");
    let totals = row_at(&host, BALANCES, "_totals", p).await;
    assert_eq!(
        totals.body,
        json!({"open_accounts": 1, "total_balance": 70})
    );

    // The workflow dashboard projection runs beside it.
    host.command("workflow_execution", "w1", cmd("Start", json!({})))
        .await
        .expect(200, "");
    let paused = host
        .command("workflow_execution", "w1", cmd("Pause", json!({})))
        .await;
    paused.expect(200, "");
    let rows = host
        .get(&format!(
            "/projections/executions_by_status/rows?min_position={}",
            position(&paused)
        ))
        .await;
    rows.expect(200, "");
    let text = rows.body.to_string();
    assert!(text.contains("paused"), "{text}");

    // Status: caught up, generation 1, running.
    let status = wait_status(&host, BALANCES, "caught up", |s| s["lag"] == 0).await;
    assert_eq!(status["state"], "running");
    assert_eq!(status["generation"], 1);
    assert!(
        status["plugin"]
            .as_str()
            .unwrap_or("")
            .starts_with("sha256:")
    );
    assert!(status["rebuild"].is_null());
    assert!(status["error"].is_null());
    let list = host.get("/projections").await;
    let names: Vec<&str> = list
        .body
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.contains(&BALANCES) && names.contains(&"executions_by_status"),
        "{names:?}"
    );

    // The checkpoint and the rows survive a restart; nothing is counted twice.
    host.restart().await;
    deposit(&host, "1", 5).await;
    let after = host.get("/readyz").await.body["head"]
        .as_u64()
        .expect("head");
    let totals = row_at(&host, BALANCES, "_totals", after).await;
    assert_eq!(
        totals.body,
        json!({"open_accounts": 1, "total_balance": 75})
    );
    host.stop().await;
}

#[tokio::test]
async fn rows_page_by_prefix_and_reads_time_out_with_the_position_reached() {
    let mut host = TestHost::start().await;
    let mut last = 0;
    for id in ["a", "b", "c", "d", "e"] {
        last = position(&open(&host, id, "o").await);
    }
    let first = host
        .get(&format!(
            "/projections/{BALANCES}/rows?prefix=account-&limit=2&min_position={last}"
        ))
        .await;
    first.expect(200, "");
    let keys = |a: &Answer| -> Vec<String> {
        a.body["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["key"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(keys(&first), ["account-a", "account-b"]);
    assert_eq!(first.body["next"], "account-b");
    let second = host
        .get(&format!(
            "/projections/{BALANCES}/rows?prefix=account-&limit=2&after=account-b"
        ))
        .await;
    assert_eq!(keys(&second), ["account-c", "account-d"]);
    let third = host
        .get(&format!(
            "/projections/{BALANCES}/rows?prefix=account-&limit=2&after=account-d"
        ))
        .await;
    assert_eq!(keys(&third), ["account-e"]);
    assert!(third.body["next"].is_null());
    assert_eq!(first.body["rows"][0]["value"]["owner"], "o");

    // Waiting for a position that never comes: 503 with the position reached.
    let a = host
        .get(&format!(
            "/projections/{BALANCES}/rows/_totals?min_position={}&timeout_ms=50",
            last + 1000
        ))
        .await;
    a.expect(503, "unavailable");
    assert_eq!(a.body["error"]["details"]["position"], last);
    host.get(&format!("/projections/{BALANCES}/rows/nope"))
        .await
        .expect(404, "not_found");
    host.get("/projections/nope").await.expect(404, "not_found");
    host.get("/projections/nope/rows/x")
        .await
        .expect(404, "not_found");
    host.get(&format!("/projections/{BALANCES}/rows?limit=0"))
        .await
        .expect(400, "invalid_request");
    host.get(&format!("/projections/{BALANCES}/rows/x?min_position=abc"))
        .await
        .expect(400, "invalid_request");
    host.stop().await;
}

#[tokio::test]
async fn admin_routes_need_the_token() {
    let mut host = TestHost::start().await;
    let routes = [
        ("POST", format!("/projections/{BALANCES}/rebuild")),
        ("POST", format!("/projections/{BALANCES}/resume")),
        ("POST", format!("/projections/{BALANCES}/promote")),
        ("DELETE", format!("/projections/{BALANCES}/shadow")),
        ("POST", format!("/plugins/{BALANCES}/rollback")),
        ("PUT", format!("/plugins/{BALANCES}")),
    ];
    for (method, path) in &routes {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        for token in [None, Some("wrong-token")] {
            let mut req = host.client.request(method.clone(), host.url(path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            host.send(req).await.expect(401, "unauthorized");
        }
    }
    host.stop().await;
}

#[tokio::test]
pub(crate) async fn a_poison_event_stops_only_its_projection_until_skipped() {
    let mut host = TestHost::start().await;
    deploy(&host, "poison_counter", artifacts::FIXTURE_POISON, "live").await;
    open(&host, "1", "ann").await;
    deposit(&host, "1", 10).await;
    let poison = withdraw(&host, "1", 3).await;
    let poison_at = position(&poison);
    let status = wait_status(&host, "poison_counter", "failed", |s| {
        s["state"] == "failed"
    })
    .await;
    assert_eq!(status["error"]["position"], poison_at);
    assert_eq!(status["error"]["event_type"], "Withdrawn");
    assert!(!status["error"]["message"].as_str().unwrap_or("").is_empty());
    assert_eq!(
        status["position"],
        poison_at - 1,
        "it processed everything before the poison"
    );
    let metrics = host.get("/metrics").await;
    let text = metrics.body.as_str().unwrap_or("").to_string();
    assert!(
        text.contains("kiln_projection_state{projection=\"poison_counter\",state=\"failed\"} 1"),
        "{text}"
    );

    // Commands and the other projections go on.
    let later = deposit(&host, "1", 5).await;
    let row = row_at(&host, BALANCES, "account-1", position(&later)).await;
    assert_eq!(row.body["balance"], 12);

    // A plain retry fails again on the same event, and says so.
    let resume = |skip: bool| {
        admin(
            &host,
            host.client
                .post(host.url("/projections/poison_counter/resume"))
                .json(&json!({ "skip": skip })),
        )
    };
    let again = host.send(resume(false)).await;
    again.expect(503, "projection_failed");
    assert_eq!(
        again.body["error"]["details"]["error"]["position"],
        poison_at
    );
    let status = wait_status(&host, "poison_counter", "failed again", |s| {
        s["state"] == "failed" && s["error"]["position"] == poison_at
    })
    .await;
    assert_eq!(status["position"], poison_at - 1);

    // Skipping it goes on after it and records the skip.
    host.send(resume(true)).await.expect(200, "");
    let status = wait_status(&host, "poison_counter", "running past the poison", |s| {
        s["state"] == "running" && s["lag"] == 0
    })
    .await;
    assert!(status["error"].is_null());
    let counts = host
        .get("/projections/poison_counter/rows/count-Deposited")
        .await;
    assert_eq!(counts.body["count"], 2);
    host.get("/projections/poison_counter/rows/count-Withdrawn")
        .await
        .expect(404, "not_found");
    let skips = host.get("/projections/poison_counter/skips").await;
    assert_eq!(skips.body["skips"][0]["position"], poison_at);
    assert_eq!(skips.body["skips"][0]["event_type"], "Withdrawn");
    // Nothing left to resume.
    host.send(resume(false)).await.expect(409, "conflict");
    host.stop().await;
}

/// Accounts with varied balances; returns the ids whose balance is >= 1000
/// (the rows the v2 logic changes) and the last position.
pub(crate) async fn seed_accounts(host: &TestHost, n: usize) -> (BTreeSet<String>, u64) {
    let mut gold = BTreeSet::new();
    let mut last = 0;
    for i in 0..n {
        let id = format!("{i:03}");
        open(host, &id, "o").await;
        let amount = (i as i64 % 4) * 500; // 0, 500, 1000, 1500
        if amount > 0 {
            last = position(&deposit(host, &id, amount).await);
        }
        if amount >= 1000 {
            gold.insert(format!("account-{id}"));
        }
    }
    (gold, last)
}

#[tokio::test]
pub(crate) async fn shadow_deploy_diffs_exactly_the_changed_keys_then_promotes() {
    let mut host = TestHost::start().await;
    let (gold, last) = seed_accounts(&host, 12).await;
    let before = host.get(&format!("/projections/{BALANCES}")).await.body;
    deploy(&host, BALANCES, artifacts::FIXTURE_BALANCES_V2, "shadow").await;
    let status = wait_status(&host, BALANCES, "shadow caught up", |s| {
        s["rebuild"]["caught_up"] == true && s["position"].as_u64() >= Some(last)
    })
    .await;
    assert_eq!(status["rebuild"]["mode"], "shadow");
    assert_eq!(
        status["generation"], before["generation"],
        "reads stay on the old generation"
    );
    // Reads still come from the old logic.
    let row = host
        .get(&format!("/projections/{BALANCES}/rows/account-002"))
        .await;
    assert!(row.body.get("tier").is_none(), "{}", row.body);

    let diff = host
        .get(&format!("/projections/{BALANCES}/diff?sample=100"))
        .await;
    diff.expect(200, "");
    assert_eq!(diff.body["comparable"], true, "{}", diff.body);
    let changed: BTreeSet<String> = diff.body["changed"]["sample"]
        .as_array()
        .expect("sample")
        .iter()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    assert_eq!(changed, gold, "{}", diff.body);
    assert_eq!(diff.body["changed"]["count"], gold.len());
    assert_eq!(diff.body["only_in_old"]["count"], 0);
    assert_eq!(diff.body["only_in_new"]["count"], 0);

    // Promote: reads switch to the new logic.
    host.send(admin(
        &host,
        host.client
            .post(host.url(&format!("/projections/{BALANCES}/promote"))),
    ))
    .await
    .expect(202, "");
    let status = wait_status(&host, BALANCES, "promoted", |s| s["rebuild"].is_null()).await;
    assert_eq!(
        status["generation"],
        before["generation"].as_u64().unwrap_or(0) + 1
    );
    let row = host
        .get(&format!("/projections/{BALANCES}/rows/account-002"))
        .await;
    assert_eq!(row.body["tier"], "gold", "{}", row.body);
    host.stop().await;
}

#[tokio::test]
async fn dropping_a_shadow_keeps_the_serving_version_current() {
    let mut host = TestHost::start().await;
    seed_accounts(&host, 4).await;
    let original = host.get("/plugins").await.body;
    let original_hash = original
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == BALANCES))
        .map(|p| p["hash"].clone())
        .expect("listed");
    deploy(&host, BALANCES, artifacts::FIXTURE_BALANCES_V2, "shadow").await;
    wait_status(&host, BALANCES, "shadow exists", |s| {
        !s["rebuild"].is_null()
    })
    .await;
    host.send(admin(
        &host,
        host.client
            .delete(host.url(&format!("/projections/{BALANCES}/shadow"))),
    ))
    .await
    .expect(200, "");
    let status = wait_status(&host, BALANCES, "no shadow", |s| s["rebuild"].is_null()).await;
    assert_eq!(status["plugin"], original_hash);
    let history = host.get(&format!("/plugins/{BALANCES}/history")).await;
    assert_eq!(history.body["versions"][0]["hash"], original_hash);
    // Nothing to drop or promote now.
    host.send(admin(
        &host,
        host.client
            .delete(host.url(&format!("/projections/{BALANCES}/shadow"))),
    ))
    .await
    .expect(409, "conflict");
    host.stop().await;
}

#[tokio::test]
async fn hot_swap_under_load_never_fails_a_read_and_switches_to_the_new_logic() {
    let host = TestHost::start().await;
    let (gold, last) = seed_accounts(&host, 16).await;
    wait_status(&host, BALANCES, "caught up", |s| {
        s["position"].as_u64() >= Some(last)
    })
    .await;
    let host = Arc::new(host);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    // A reader of existing rows and a writer of new commands, both in loops.
    let reader = {
        let (host, stop, reads) = (host.clone(), stop.clone(), reads.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for key in ["account-000", "account-005", "_totals"] {
                    let a = host
                        .get(&format!("/projections/{BALANCES}/rows/{key}"))
                        .await;
                    assert_eq!(
                        a.status, 200,
                        "read of {key} failed during the swap: {}",
                        a.body
                    );
                    reads.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let writer = {
        let (host, stop) = (host.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                host.command(
                    "bank_account",
                    "001",
                    cmd("Deposit", json!({ "amount": 1 })),
                )
                .await
                .expect(200, "");
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = host.get(&format!("/projections/{BALANCES}")).await.body;
    deploy(&host, BALANCES, artifacts::FIXTURE_BALANCES_V2, "live").await;
    let switched = wait_status(&host, BALANCES, "switched", |s| {
        s["generation"].as_u64() > before["generation"].as_u64() && s["rebuild"].is_null()
    })
    .await;
    // Keep the load on a little after the switch, then stop it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    reader.await.expect("every read succeeded");
    let deposits = writer.await.expect("every command succeeded");
    assert!(reads.load(Ordering::SeqCst) > 10);
    assert!(deposits > 0);
    assert_eq!(switched["state"], "running");
    let h = head(&host).await;
    for key in &gold {
        let row = row_at(&host, BALANCES, key, h).await;
        assert_eq!(row.body["tier"], "gold", "{key}: {}", row.body);
    }
    let plain = row_at(&host, BALANCES, "account-000", h).await;
    assert!(plain.body.get("tier").is_none(), "{}", plain.body);
    // The deposits made during the swap are all counted by the new generation.
    let account = row_at(&host, BALANCES, "account-001", h).await;
    assert_eq!(account.body["balance"], 500 + deposits);
    let mut host = Arc::try_unwrap(host).ok().expect("only owner");
    host.stop().await;
}

#[tokio::test]
async fn history_rollback_and_rebuild() {
    let mut host = TestHost::start().await;
    seed_accounts(&host, 4).await;
    let v1 = host.get(&format!("/projections/{BALANCES}")).await.body["plugin"].clone();
    let v2 = deploy(&host, BALANCES, artifacts::FIXTURE_BALANCES_V2, "live")
        .await
        .body["hash"]
        .clone();
    wait_status(&host, BALANCES, "on v2", |s| {
        s["plugin"] == v2 && s["rebuild"].is_null()
    })
    .await;
    let history = host.get(&format!("/plugins/{BALANCES}/history")).await;
    history.expect(200, "");
    let versions = history.body["versions"]
        .as_array()
        .expect("versions")
        .clone();
    assert_eq!(versions.len(), 2, "{}", history.body);
    assert_eq!(versions[0]["hash"], v2);
    assert_eq!(versions[1]["hash"], v1);
    assert_eq!(versions[1]["source"], "directory");

    let rolled = host
        .send(admin(
            &host,
            host.client
                .post(host.url(&format!("/plugins/{BALANCES}/rollback"))),
        ))
        .await;
    rolled.expect(200, "");
    assert_eq!(rolled.body["hash"], v1);
    let status = wait_status(&host, BALANCES, "back on v1", |s| {
        s["plugin"] == v1 && s["rebuild"].is_null()
    })
    .await;
    let row = host
        .get(&format!("/projections/{BALANCES}/rows/account-002"))
        .await;
    assert!(row.body.get("tier").is_none(), "{}", row.body);
    let history = host.get(&format!("/plugins/{BALANCES}/history")).await;
    assert_eq!(history.body["versions"][0]["mode"], "rollback");

    // A rebuild of the same version: a new generation with the same rows.
    let generation = status["generation"].as_u64().expect("generation");
    host.send(admin(
        &host,
        host.client
            .post(host.url(&format!("/projections/{BALANCES}/rebuild"))),
    ))
    .await
    .expect(202, "");
    wait_status(&host, BALANCES, "rebuilt", |s| {
        s["generation"].as_u64() == Some(generation + 1) && s["rebuild"].is_null()
    })
    .await;
    let again = host
        .get(&format!("/projections/{BALANCES}/rows/account-002"))
        .await;
    assert_eq!(again.body, row.body);
    host.get("/plugins/nope/history")
        .await
        .expect(404, "not_found");
    host.stop().await;
}

#[tokio::test]
async fn a_changed_file_in_the_plugin_directory_is_deployed() {
    let mut host =
        TestHost::start_with(|c| c.watch_interval = Some(Duration::from_millis(20))).await;
    seed_accounts(&host, 4).await;
    let dir = host.plugins_dir().to_path_buf();
    std::fs::copy(
        artifacts::FIXTURE_BALANCES_V2,
        dir.join(format!("{BALANCES}.wasm")),
    )
    .expect("copy");
    let status = wait_status(&host, BALANCES, "the file's version serving", |s| {
        s["generation"] == 2 && s["rebuild"].is_null()
    })
    .await;
    let history = host.get(&format!("/plugins/{BALANCES}/history")).await;
    assert_eq!(history.body["versions"][0]["hash"], status["plugin"]);
    assert_eq!(history.body["versions"][0]["source"], "directory");
    let row = host
        .get(&format!("/projections/{BALANCES}/rows/account-002"))
        .await;
    assert_eq!(row.body["tier"], "gold", "{}", row.body);
    host.stop().await;
}

#[tokio::test]
async fn a_failed_projection_retries_with_a_new_version_and_uploads_survive_a_restart() {
    let mut host = TestHost::start().await;
    deploy(&host, "counter", artifacts::FIXTURE_POISON, "live").await;
    open(&host, "1", "ann").await;
    deposit(&host, "1", 10).await;
    withdraw(&host, "1", 3).await;
    wait_status(&host, "counter", "failed", |s| s["state"] == "failed").await;
    // New logic under the same name: a projection that does not trap.
    deploy(&host, "counter", artifacts::ACCOUNT_BALANCES, "live").await;
    let status = wait_status(&host, "counter", "running the new version", |s| {
        s["state"] == "running" && s["rebuild"].is_null() && s["lag"] == 0
    })
    .await;
    assert!(status["error"].is_null(), "{status}");
    assert_eq!(status["generation"], 2);
    let row = host.get("/projections/counter/rows/account-1").await;
    assert_eq!(row.body["balance"], 7);

    // The upload is in the store: a restart (same plugin directory, which
    // does not hold it) brings it back at the same generation and position.
    host.restart().await;
    let again = wait_status(&host, "counter", "restored", |s| s["lag"] == 0).await;
    assert_eq!(again["generation"], 2);
    assert_eq!(again["plugin"], status["plugin"]);
    let listed = host.get("/plugins").await;
    assert!(
        listed.body.to_string().contains("\"counter\""),
        "{}",
        listed.body
    );
    host.stop().await;
}

#[tokio::test]
async fn files_already_in_the_directory_are_not_redeployed_over_an_upload() {
    // The upload lands before the watcher's second scan (the first one
    // after which a file counts as stable); the files that were there at
    // start must not be deployed then.
    let mut host =
        TestHost::start_with(|c| c.watch_interval = Some(Duration::from_millis(1000))).await;
    let v2 = deploy(&host, BALANCES, artifacts::FIXTURE_BALANCES_V2, "live")
        .await
        .body["hash"]
        .clone();
    // Scans of the directory, whose account_balances.wasm is still v1.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let history = host.get(&format!("/plugins/{BALANCES}/history")).await;
    assert_eq!(history.body["versions"][0]["hash"], v2, "{}", history.body);
    assert_eq!(history.body["versions"].as_array().map(Vec::len), Some(2));
    host.stop().await;
}
