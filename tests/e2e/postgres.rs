//! The host on PostgreSQL: the saga runs there as on SQLite, and two hosts
//! sharing one database lose no update on one stream.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use kiln_testkit::ScratchDatabase;

use crate::common::{TestHost, artifacts, cmd};

/// Two hosts on `db`, each loading `plugins`; `tune(i, config)` adjusts host
/// `i` (0 or 1) after its database is set.
async fn two_hosts(
    db: &ScratchDatabase,
    plugins: &[(&str, &str)],
    tune: impl Fn(usize, &mut kiln::server::HostConfig),
) -> (TestHost, TestHost) {
    let mut hosts = Vec::with_capacity(2);
    for i in 0..2 {
        let url = db.url().to_string();
        hosts.push(
            TestHost::start_with_plugins(plugins, |c| {
                c.db = url;
                tune(i, c);
            })
            .await,
        );
    }
    let second = hosts.pop().expect("two hosts");
    let first = hosts.pop().expect("two hosts");
    (first, second)
}

/// Deployments are followed every 200 ms instead of 2 s.
fn fast_deployment_poll(_: usize, c: &mut kiln::server::HostConfig) {
    c.deployment_poll = Duration::from_millis(200);
}

#[tokio::test]
async fn the_transfer_saga_runs_on_postgres() {
    let Some(db) = ScratchDatabase::for_test("the_transfer_saga_runs_on_postgres").await else {
        return;
    };
    let url = db.url().to_string();
    let mut h = TestHost::start_with_plugins(
        &[
            (artifacts::BANK_ACCOUNT, "bank_account"),
            (artifacts::TRANSFER, "transfer"),
            (artifacts::TRANSFER_SAGA, "transfer_saga"),
            (artifacts::ACCOUNT_BALANCES, "account_balances"),
        ],
        |c| c.db = url,
    )
    .await;
    for (id, amount) in [("a", 100), ("b", 0), ("shut", 0)] {
        h.command("bank_account", id, cmd("Open", json!({"owner": id})))
            .await
            .expect(200, "");
        if amount > 0 {
            h.command(
                "bank_account",
                id,
                cmd("Deposit", json!({"amount": amount})),
            )
            .await
            .expect(200, "");
        }
    }
    h.command("bank_account", "shut", cmd("Close", json!({})))
        .await
        .expect(200, "");
    for (id, to, amount) in [("t1", "b", 30), ("t2", "shut", 20), ("t3", "b", 500)] {
        h.command(
            "transfer",
            id,
            cmd("Request", json!({"from": "a", "to": to, "amount": amount})),
        )
        .await
        .expect(200, "");
    }
    for id in ["t1", "t2", "t3"] {
        h.wait_saga("transfer_saga", id, "completed").await;
    }
    assert_eq!((h.balance("a").await, h.balance("b").await), (70, 30));
    let t2 = h.get("/streams/transfer-t2/state").await;
    assert_eq!(t2.body["state"]["status"], "failed", "{}", t2.body);
    // The projection runs on PostgreSQL too.
    let head = h.get("/projections/account_balances").await.body["head"]
        .as_u64()
        .unwrap_or(0);
    let row = h
        .get(&format!(
            "/projections/account_balances/rows/account-b?min_position={head}"
        ))
        .await;
    row.expect(200, "");
    assert_eq!(row.body["balance"], 30);
    h.stop().await;
    db.remove().await.expect("drop the test database");
}

/// Two hosts on one database take deposits on the same stream at once:
/// every acknowledged deposit is in the balance, versions have no gap, and
/// a conflict the pipeline could not retry away is a 409, never a lost update.
#[tokio::test]
async fn two_hosts_on_one_stream_lose_no_update() {
    let Some(db) = ScratchDatabase::for_test("two_hosts_on_one_stream_lose_no_update").await else {
        return;
    };
    let plugins = [(artifacts::BANK_ACCOUNT, "bank_account")];
    let (mut first, mut second) = two_hosts(&db, &plugins, |_, _| {}).await;
    first
        .command(
            "bank_account",
            "shared",
            cmd("Open", json!({"owner": "both"})),
        )
        .await
        .expect(200, "");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let host = if i % 2 == 0 { &first } else { &second };
        let (client, url) = (
            host.client.clone(),
            host.url("/commands/bank_account/shared"),
        );
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&cmd("Deposit", json!({"amount": 1})))
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body)
        }));
    }
    let mut acked = 0;
    for t in tasks {
        let (status, body) = t.await.expect("task");
        match status {
            200 => acked += 1,
            409 => assert_eq!(body["error"]["code"], "wrong_expected_version", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(acked > 0);
    for h in [&first, &second] {
        assert_eq!(
            h.balance("shared").await,
            acked,
            "every acknowledged deposit counts"
        );
    }
    let events = second
        .get("/streams/bank_account-shared/events?from_version=1&limit=1000")
        .await;
    let versions: Vec<u64> = events.body["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["version"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(versions, (1..=acked as u64 + 1).collect::<Vec<_>>());
    first.stop().await;
    second.stop().await;
    db.remove().await.expect("drop the test database");
}

/// The `kiln_command_conflict_retries_total` counter of a host.
async fn conflict_retries(h: &TestHost) -> u64 {
    let text = h
        .client
        .get(h.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("kiln_command_conflict_retries_total "))
        .and_then(|v| v.parse().ok())
        .expect("the conflict counter is exported")
}

/// A host that knows other hosts write to the database brings a cached
/// state up to date before deciding, instead of finding out from a
/// conflict (a whole commit cycle) and deciding again.
#[tokio::test]
async fn a_stale_cached_state_is_brought_up_to_date_without_a_conflict() {
    let Some(db) = ScratchDatabase::for_test("a_stale_cached_state_is_brought_up_to_date").await
    else {
        return;
    };
    let plugins = [(artifacts::BANK_ACCOUNT, "bank_account")];
    let (mut first, mut second) = two_hosts(&db, &plugins, |_, _| {}).await;
    // The second host caches the account's state at version 1...
    second
        .command("bank_account", "s", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    // ...the first one moves it on, and the second hears of it.
    let mut last = 0;
    for _ in 0..3 {
        let r = first
            .command("bank_account", "s", cmd("Deposit", json!({"amount": 10})))
            .await;
        r.expect(200, "");
        last = r.body["position"].as_u64().expect("position");
    }
    // The second host hears of the commits before its head moves past them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = second.get("/readyz").await;
        if ready.body["head"].as_u64() >= Some(last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second host never heard: {}",
            ready.body
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = conflict_retries(&second).await;
    let r = second
        .command("bank_account", "s", cmd("Deposit", json!({"amount": 5})))
        .await;
    r.expect(200, "");
    assert_eq!(r.body["version"], 5, "{}", r.body);
    assert_eq!(
        conflict_retries(&second).await,
        before,
        "decided once, on the state brought up to date"
    );
    assert_eq!(second.balance("s").await, 35);
    first.stop().await;
    second.stop().await;
    db.remove().await.expect("drop the test database");
}

/// A refusal appends nothing, so no version check catches one decided on a
/// state another host had moved on from: the host confirms it against the
/// store first. Here the second host does not hear of the first one's
/// commits (no LISTEN, polling once an hour), so its cache is behind.
#[tokio::test]
async fn a_command_is_never_refused_on_a_stale_state() {
    let Some(db) = ScratchDatabase::for_test("a_command_is_never_refused_on_a_stale_state").await
    else {
        return;
    };
    let plugins = [(artifacts::BANK_ACCOUNT, "bank_account")];
    // The second host never hears of the first one's commits.
    let (mut first, mut second) = two_hosts(&db, &plugins, |i, c| {
        if i == 1 {
            c.postgres.listen = false;
            c.postgres.poll_interval = Duration::from_secs(3600);
        }
    })
    .await;
    second
        .command("bank_account", "t", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    first
        .command("bank_account", "t", cmd("Deposit", json!({"amount": 30})))
        .await
        .expect(200, "");
    // On the cached state (balance 0) this withdrawal is refused.
    let r = second
        .command("bank_account", "t", cmd("Withdraw", json!({"amount": 30})))
        .await;
    r.expect(200, "");
    assert_eq!(r.body["version"], 3, "{}", r.body);
    // An expected version the cache is behind on is checked the same way.
    first
        .command("bank_account", "t", cmd("Deposit", json!({"amount": 1})))
        .await
        .expect(200, "");
    let mut body = cmd("Deposit", json!({"amount": 1}));
    body["expected_version"] = json!(4);
    second
        .command("bank_account", "t", body)
        .await
        .expect(200, "");
    assert_eq!(first.balance("t").await, 2);
    first.stop().await;
    second.stop().await;
    db.remove().await.expect("drop the test database");
}

/// A projection version deployed through the host that does not run the
/// projection is built and switched to by the host that does.
#[tokio::test]
async fn a_projection_version_deployed_through_another_host_is_built_by_its_holder() {
    let Some(db) =
        ScratchDatabase::for_test("a_projection_version_deployed_through_another_host").await
    else {
        return;
    };
    let plugins = [
        (artifacts::BANK_ACCOUNT, "bank_account"),
        (artifacts::ACCOUNT_BALANCES, "account_balances"),
    ];
    let (mut first, mut second) = two_hosts(&db, &plugins, fast_deployment_poll).await;
    first
        .command("bank_account", "p1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    // Which host runs the projection, and which does not.
    let runs_it = |status: &Value| status["runs_here"] == true;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (holder, other) = loop {
        let a = first.get("/projections/account_balances").await;
        let b = second.get("/projections/account_balances").await;
        if runs_it(&a.body) {
            break (&first, &second);
        }
        if runs_it(&b.body) {
            break (&second, &first);
        }
        assert!(
            Instant::now() < deadline,
            "no host runs it: {} / {}",
            a.body,
            b.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let before = holder.get("/projections/account_balances").await.body;
    let bytes = std::fs::read(artifacts::FIXTURE_BALANCES_V2).expect("component");
    let put = other.deploy("account_balances", bytes).await;
    put.expect(200, "");
    let hash = put.body["hash"].as_str().unwrap_or("").to_string();
    assert_ne!(before["plugin"], hash.as_str());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = holder.get("/projections/account_balances").await.body;
        if status["plugin"] == hash.as_str() && status["rebuild"].is_null() {
            assert!(
                status["generation"].as_u64() > before["generation"].as_u64(),
                "a new generation: {status}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never switched: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.stop().await;
    second.stop().await;
    db.remove().await.expect("drop the test database");
}

/// A new aggregate version deployed through one host serves commands on the
/// other host too, within a few polls.
#[tokio::test]
async fn a_version_deployed_through_one_host_runs_on_the_other() {
    let Some(db) =
        ScratchDatabase::for_test("a_version_deployed_through_one_host_runs_on_the_other").await
    else {
        return;
    };
    let plugins = [(artifacts::BANK_ACCOUNT, "bank_account")];
    let (mut first, mut second) = two_hosts(&db, &plugins, fast_deployment_poll).await;
    // The flaky bank: bank_account's logic, but a deposit to an open
    // `unreachable-…` account traps.
    let bytes = std::fs::read(artifacts::FIXTURE_FLAKY_BANK).expect("component");
    let put = first.deploy("bank_account", bytes).await;
    put.expect(200, "");
    let hash = put.body["hash"].as_str().unwrap_or("").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let plugins = second.get("/plugins").await;
        let loaded = plugins.body.as_array().is_some_and(|list| {
            list.iter()
                .any(|p| p["name"] == "bank_account" && p["hash"] == hash.as_str())
        });
        if loaded {
            break;
        }
        assert!(Instant::now() < deadline, "{}", plugins.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second
        .command(
            "bank_account",
            "unreachable-1",
            cmd("Open", json!({"owner": "x"})),
        )
        .await
        .expect(200, "");
    let trapped = second
        .command(
            "bank_account",
            "unreachable-1",
            cmd("Deposit", json!({"amount": 5})),
        )
        .await;
    trapped.expect(500, "plugin_trap");
    assert!(
        trapped.message().contains("unreachable"),
        "{}",
        trapped.body
    );
    first.stop().await;
    second.stop().await;
    db.remove().await.expect("drop the test database");
}
