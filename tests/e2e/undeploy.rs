//! Undeploying plugins (`DELETE /plugins/{name}`): an aggregate, a
//! projection and a saga each stop, say they were removed, stay removed
//! across a restart (their file still in the plugin directory), and come
//! back when deployed again.

use std::str::FromStr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::sqlite::SqliteConnectOptions;

use crate::common::{ADMIN_TOKEN, Answer, TestHost, artifacts, cmd};

const BALANCES: &str = "account_balances";

/// `DELETE /plugins/{name}`, with `token` as bearer if any.
async fn undeploy(h: &TestHost, name: &str, token: Option<&str>) -> Answer {
    let req = h.client.delete(h.url(&format!("/plugins/{name}")));
    h.send(match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    })
    .await
}

async fn command(h: &TestHost, id: &str, command_type: &str, data: Value) -> Answer {
    h.command("bank_account", id, cmd(command_type, data)).await
}

fn position(a: &Answer) -> u64 {
    a.body["position"].as_u64().expect("position")
}

fn listed(list: &Answer, name: &str) -> bool {
    list.body
        .as_array()
        .expect("a list")
        .iter()
        .any(|p| p["name"] == name)
}

/// The history's modes, newest first.
async fn modes(h: &TestHost, name: &str) -> Vec<String> {
    let a = h.get(&format!("/plugins/{name}/history")).await;
    a.expect(200, "");
    a.body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["mode"].as_str().unwrap_or("").to_string())
        .collect()
}

/// What a removed bank_account answers: no commands and no state (404
/// naming it removed), its events still served, not listed.
async fn assert_bank_removed(h: &TestHost) {
    let c = command(h, "u1", "Deposit", json!({"amount": 1})).await;
    c.expect(404, "not_found");
    assert!(
        c.message()
            .contains(r#"aggregate "bank_account" was removed"#),
        "{}",
        c.body
    );
    let s = h.get("/streams/bank_account-u1/state").await;
    s.expect(404, "not_found");
    assert!(s.message().contains("was removed"), "{}", s.body);
    let e = h.get("/streams/bank_account-u1/events").await;
    e.expect(200, "");
    assert_eq!(e.body["events"].as_array().map(Vec::len), Some(2));
    assert!(!listed(&h.get("/plugins").await, "bank_account"));
}

#[tokio::test]
async fn an_undeployed_aggregate_takes_no_commands_keeps_its_events_and_stays_removed() {
    let mut h = TestHost::start().await;
    command(&h, "u1", "Open", json!({"owner": "ann"}))
        .await
        .expect(200, "");
    command(&h, "u1", "Deposit", json!({"amount": 5}))
        .await
        .expect(200, "");
    // Admin only, with the JSON error body.
    undeploy(&h, "bank_account", None)
        .await
        .expect(401, "unauthorized");
    undeploy(&h, "bank_account", Some("wrong"))
        .await
        .expect(401, "unauthorized");
    undeploy(&h, "no_such_plugin", Some(ADMIN_TOKEN))
        .await
        .expect(404, "not_found");

    let r = undeploy(&h, "bank_account", Some(ADMIN_TOKEN)).await;
    r.expect(200, "");
    assert_eq!(
        (&r.body["mode"], &r.body["source"], &r.body["kind"]),
        (&json!("removed"), &json!("undeploy"), &json!("aggregate"))
    );
    assert_bank_removed(&h).await;
    assert_eq!(modes(&h, "bank_account").await, ["removed", "live"]);
    let again = undeploy(&h, "bank_account", Some(ADMIN_TOKEN)).await;
    again.expect(404, "not_found");
    assert!(
        again.message().contains("removed already"),
        "{}",
        again.body
    );

    // The name keeps its kind.
    let projection = std::fs::read(artifacts::ACCOUNT_BALANCES).expect("projection");
    h.deploy("bank_account", projection)
        .await
        .expect(422, "invalid_plugin");
    assert!(!listed(&h.get("/plugins").await, "bank_account"));

    // Its file is still in the plugin directory: the removal wins, at a
    // restart and when the file changes.
    let file = h.plugins_dir().join("bank_account.wasm");
    assert!(file.exists());
    h.restart().await;
    assert_bank_removed(&h).await;
    let other = std::fs::read(artifacts::FIXTURE_SNOOP).expect("fixture");
    std::fs::write(&file, &other).expect("rewrite");
    // Written with it: once the watcher has loaded this one, it has seen
    // both files (same scan; reported in path order, bank_account first).
    std::fs::write(h.plugins_dir().join("probe.wasm"), &other).expect("probe");
    h.wait_for_plugin("probe", Duration::from_secs(20)).await;
    assert_bank_removed(&h).await;

    // Rolled back: the removed version serves again, its streams where
    // they were.
    let back = h
        .send(
            h.client
                .post(h.url("/plugins/bank_account/rollback"))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
    back.expect(200, "");
    assert_eq!(back.body["hash"], r.body["hash"]);
    assert_eq!(h.balance("u1").await, 5);
    let d = command(&h, "u1", "Deposit", json!({"amount": 1})).await;
    d.expect(200, "");
    assert_eq!(d.body["version"], 3);
    assert_eq!(
        modes(&h, "bank_account").await,
        ["rollback", "removed", "live"]
    );
    h.stop().await;
}

/// Rows and generations of `projection` in the host's SQLite database.
async fn stored(h: &TestHost, projection: &str) -> (i64, i64) {
    let options = SqliteConnectOptions::from_str(h.db_url())
        .expect("sqlite url")
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("open the database");
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(projection)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    let rows = count("SELECT count(*) FROM view_rows WHERE projection = ?").await;
    let generations = count("SELECT count(*) FROM projection_generations WHERE name = ?").await;
    pool.close().await;
    (rows, generations)
}

async fn assert_balances_removed(h: &TestHost) {
    for path in [
        format!("/projections/{BALANCES}/rows/account-u2"),
        format!("/projections/{BALANCES}/rows?prefix=account-"),
        format!("/projections/{BALANCES}"),
    ] {
        let a = h.get(&path).await;
        a.expect(404, "not_found");
        assert!(
            a.message()
                .contains(r#"projection "account_balances" was removed"#),
            "{path}: {}",
            a.body
        );
    }
    assert!(!listed(&h.get("/projections").await, BALANCES));
    assert!(!listed(&h.get("/plugins").await, BALANCES));
}

async fn balance_row(h: &TestHost, id: &str, min_position: u64) -> Value {
    let a = h
        .get(&format!(
            "/projections/{BALANCES}/rows/account-{id}?min_position={min_position}&timeout_ms=10000"
        ))
        .await;
    a.expect(200, "");
    a.body["balance"].clone()
}

#[tokio::test]
async fn an_undeployed_projection_answers_removed_and_its_rows_go_after_the_grace() {
    let mut h = TestHost::start_with(|c| {
        c.projections.undeploy_grace = Duration::from_secs(2);
    })
    .await;
    command(&h, "u2", "Open", json!({"owner": "bob"}))
        .await
        .expect(200, "");
    let p = position(&command(&h, "u2", "Deposit", json!({"amount": 30})).await);
    assert_eq!(balance_row(&h, "u2", p).await, 30);

    undeploy(&h, BALANCES, Some(ADMIN_TOKEN))
        .await
        .expect(200, "");
    assert_balances_removed(&h).await;
    assert_eq!(modes(&h, BALANCES).await[0], "removed");
    // A restart within the grace keeps it removed, and its rows still go.
    h.restart().await;
    assert_balances_removed(&h).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = stored(&h, BALANCES).await;
        if left == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows and generations left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_balances_removed(&h).await;

    // Deployed again after the grace: built from the start of history.
    let p = position(&command(&h, "u2", "Deposit", json!({"amount": 12})).await);
    let bytes = std::fs::read(artifacts::ACCOUNT_BALANCES).expect("balances");
    h.deploy(BALANCES, bytes).await.expect(200, "");
    assert_eq!(balance_row(&h, "u2", p).await, 42);
    h.stop().await;
}

#[tokio::test]
async fn a_projection_deployed_again_within_the_grace_resumes_its_generation() {
    let mut h = TestHost::start().await;
    command(&h, "u3", "Open", json!({"owner": "cy"}))
        .await
        .expect(200, "");
    let p = position(&command(&h, "u3", "Deposit", json!({"amount": 7})).await);
    assert_eq!(balance_row(&h, "u3", p).await, 7);
    // A second generation, so that a new build (generation 1 or 3) would
    // not pass for the one resumed.
    h.send(
        h.client
            .post(h.url(&format!("/projections/{BALANCES}/rebuild")))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await
    .expect(202, "");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = h.get(&format!("/projections/{BALANCES}")).await;
        if s.body["generation"] == 2 && s.body["rebuild"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", s.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    undeploy(&h, BALANCES, Some(ADMIN_TOKEN))
        .await
        .expect(200, "");
    assert_balances_removed(&h).await;
    let p = position(&command(&h, "u3", "Deposit", json!({"amount": 3})).await);
    // Kept during the grace (300 s by default).
    assert!(stored(&h, BALANCES).await.0 > 0);

    let bytes = std::fs::read(artifacts::ACCOUNT_BALANCES).expect("balances");
    h.deploy(BALANCES, bytes).await.expect(200, "");
    assert_eq!(balance_row(&h, "u3", p).await, 10);
    let s = h.get(&format!("/projections/{BALANCES}")).await;
    assert_eq!(
        (&s.body["generation"], &s.body["rebuild"]),
        (&json!(2), &Value::Null),
        "{}",
        s.body
    );
    h.stop().await;
}

/// Wait until transfer `id` has a command being retried.
async fn wait_for_a_retry(h: &TestHost, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = h.get(&format!("/sagas/transfer_saga/{id}")).await;
        let retried = i.body["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["outcome"] == "retry"));
        if retried {
            return;
        }
        assert!(Instant::now() < deadline, "{}", i.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_undeployed_saga_stops_dispatching_and_resumes_its_outbox_when_deployed_again() {
    let mut h = TestHost::start_with_plugins(
        &[
            (artifacts::FIXTURE_FLAKY_BANK, "bank_account"),
            (artifacts::TRANSFER, "transfer"),
            (artifacts::TRANSFER_SAGA, "transfer_saga"),
        ],
        |c| {
            c.sagas.retry_base = Duration::from_millis(50);
            c.sagas.retry_max = Duration::from_millis(50);
            c.sagas.max_attempts = 10_000;
        },
    )
    .await;
    command(&h, "a", "Open", json!({"owner": "a"}))
        .await
        .expect(200, "");
    command(&h, "a", "Deposit", json!({"amount": 100}))
        .await
        .expect(200, "");
    // The flaky bank traps on deposits to `unreachable-…`: the deposit
    // stays in the saga's outbox, retried.
    command(&h, "unreachable-4", "Open", json!({"owner": "u"}))
        .await
        .expect(200, "");
    h.command(
        "transfer",
        "t4",
        cmd(
            "Request",
            json!({"from": "a", "to": "unreachable-4", "amount": 10, "timeout_ms": 600_000}),
        ),
    )
    .await
    .expect(200, "");
    wait_for_a_retry(&h, "t4").await;

    let r = undeploy(&h, "transfer_saga", Some(ADMIN_TOKEN)).await;
    r.expect(200, "");
    assert_eq!(r.body["kind"], "saga");
    for path in ["/sagas/transfer_saga", "/sagas/transfer_saga/t4"] {
        let a = h.get(path).await;
        a.expect(404, "not_found");
        assert!(
            a.message().contains(r#"saga "transfer_saga" was removed"#),
            "{path}: {}",
            a.body
        );
    }
    // A command in flight when the saga was removed finishes on its own
    // (against the flaky bank): nothing to wait for but its end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The bank that accepts the deposit: a running saga would now apply it
    // at its next retry (every 50 ms). Removed, it does not.
    let bank = std::fs::read(artifacts::BANK_ACCOUNT).expect("bank");
    h.deploy("bank_account", bank).await.expect(200, "");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = h.get("/streams/bank_account-unreachable-4/events").await;
    assert_eq!(
        events.body["events"].as_array().map(Vec::len),
        Some(1),
        "only Opened: {}",
        events.body
    );

    // Deployed again: it dispatches its outbox and completes the transfer.
    let saga = std::fs::read(artifacts::TRANSFER_SAGA).expect("saga");
    h.deploy("transfer_saga", saga).await.expect(200, "");
    h.wait_saga("transfer_saga", "t4", "completed").await;
    assert_eq!(h.balance("unreachable-4").await, 10);
    assert_eq!(h.balance("a").await, 90);
    assert_eq!(
        modes(&h, "transfer_saga").await,
        ["live", "removed", "live"]
    );
    h.stop().await;
}

/// Poll `path` on `h` until it answers `status` (at most 20 s); the answer.
async fn wait_answer(h: &TestHost, path: &str, status: u16) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = h.get(path).await;
        if a.status.as_u16() == status {
            return a;
        }
        assert!(Instant::now() < deadline, "{path}: {} {}", a.status, a.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hosts sharing a PostgreSQL database follow a removal made through
/// another host, and a deployment after it.
#[tokio::test]
async fn hosts_sharing_a_database_follow_a_removal_and_a_new_deployment() {
    let Some(db) = kiln_testkit::ScratchDatabase::for_test("undeploy_follows").await else {
        return;
    };
    let plugins = [
        (artifacts::BANK_ACCOUNT, "bank_account"),
        (artifacts::ACCOUNT_BALANCES, BALANCES),
    ];
    let tune = |url: String| {
        move |c: &mut kiln::server::HostConfig| {
            c.db = url;
            c.lease_ttl = Duration::from_millis(1_000);
            c.deployment_poll = Duration::from_millis(100);
        }
    };
    let mut a = TestHost::start_with_plugins(&plugins, tune(db.url().to_string())).await;
    let mut b = TestHost::start_with_plugins(&plugins, tune(db.url().to_string())).await;
    let p = position(&command(&a, "u5", "Open", json!({"owner": "e"})).await);
    assert_eq!(balance_row(&b, "u5", p).await, 0);

    undeploy(&a, BALANCES, Some(ADMIN_TOKEN))
        .await
        .expect(200, "");
    undeploy(&a, "bank_account", Some(ADMIN_TOKEN))
        .await
        .expect(200, "");
    let row = format!("/projections/{BALANCES}/rows/account-u5");
    for h in [&a, &b] {
        let read = wait_answer(h, &row, 404).await;
        assert!(read.message().contains("was removed"), "{}", read.body);
        wait_answer(h, "/streams/bank_account-u5/state", 404).await;
    }
    // Nobody holds the removed projection's lease.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cluster = b.get("/cluster").await;
        let held = cluster.body["leases"]
            .as_array()
            .expect("leases")
            .iter()
            .any(|l| l["name"] == "projection:account_balances" && l["expired"] == false);
        if !held {
            break;
        }
        assert!(Instant::now() < deadline, "{}", cluster.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let bank = std::fs::read(artifacts::BANK_ACCOUNT).expect("bank");
    b.deploy("bank_account", bank).await.expect(200, "");
    let state = wait_answer(&a, "/streams/bank_account-u5/state", 200).await;
    assert_eq!(state.body["version"], 1);
    a.stop().await;
    b.stop().await;
    db.remove().await.expect("drop the scratch database");
}
