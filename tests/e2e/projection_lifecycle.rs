//! A projection's shadow and failures across the operator's actions: a
//! promoted (or dropped) shadow stays as it was left after restarts, the
//! shadow's rows and both values of a diff can be read, and a failed
//! projection says so at once to readers and to a resume that fails again.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use kiln_testkit::ScratchDatabase;

use crate::common::{Answer, TestHost, artifacts};
use crate::projections::{
    admin, deploy, deposit, head, open, position, row_at, seed_accounts, wait_status, withdraw,
};

/// The projection these tests deploy by upload: the plugin directory holds
/// only the aggregate, so a restart keeps the uploaded versions.
const NAME: &str = "balances";

/// A host on SQLite (`db` none) or on the PostgreSQL database `db`, whose
/// plugin directory holds only `bank_account`.
async fn host_on(db: Option<&ScratchDatabase>) -> TestHost {
    let url = db.map(|d| d.url().to_string());
    TestHost::start_with_plugins(&[(artifacts::BANK_ACCOUNT, "bank_account")], |c| {
        if let Some(url) = url {
            c.db = url;
        }
    })
    .await
}

async fn promote(host: &TestHost, name: &str) -> Answer {
    host.send(admin(
        host,
        host.client
            .post(host.url(&format!("/projections/{name}/promote"))),
    ))
    .await
}

async fn drop_shadow(host: &TestHost, name: &str) -> Answer {
    host.send(admin(
        host,
        host.client
            .delete(host.url(&format!("/projections/{name}/shadow"))),
    ))
    .await
}

/// Deploy v1 live over seeded accounts, then v2 as a shadow, and wait for
/// the shadow to catch up. The accounts v2 changes, and the status.
async fn seeded_with_a_shadow(host: &TestHost) -> (std::collections::BTreeSet<String>, Value) {
    let (gold, last) = seeded(host).await;
    (gold, with_a_shadow(host, last).await)
}

/// Deploy v1 live over seeded accounts; the accounts v2 changes, and the
/// last position.
async fn seeded(host: &TestHost) -> (std::collections::BTreeSet<String>, u64) {
    deploy(host, NAME, artifacts::ACCOUNT_BALANCES, "live").await;
    let (gold, last) = seed_accounts(host, 8).await;
    wait_status(host, NAME, "v1 caught up", |s| {
        s["position"].as_u64() >= Some(last)
    })
    .await;
    (gold, last)
}

/// Deploy v2 as a shadow and wait for it to catch up with `last`.
async fn with_a_shadow(host: &TestHost, last: u64) -> Value {
    deploy(host, NAME, artifacts::FIXTURE_BALANCES_V2, "shadow").await;
    wait_status(host, NAME, "shadow caught up", |s| {
        s["rebuild"]["caught_up"] == true && s["rebuild"]["position"].as_u64() >= Some(last)
    })
    .await
}

/// After a restart: the projection serves `generation` from its checkpoint
/// (`position`), replaying nothing, with nothing being rebuilt.
async fn assert_resumed_as_running(host: &TestHost, generation: u64, position: u64) {
    let status = wait_status(host, NAME, "resumed", |s| s["runs_here"] == true).await;
    assert_eq!(status["generation"], generation, "{status}");
    assert_eq!(status["state"], "running", "{status}");
    assert!(status["rebuild"].is_null(), "nothing rebuilds: {status}");
    assert_eq!(status["position"], position, "its checkpoint: {status}");
    assert_eq!(
        status["events_processed"], 0,
        "no event processed again: {status}"
    );
}

async fn a_promoted_shadow_serves_after_restarts(db: Option<&ScratchDatabase>) {
    let mut host = host_on(db).await;
    let (gold, status) = seeded_with_a_shadow(&host).await;
    assert_eq!(status["generation"], 1);
    assert_eq!(status["rebuild"]["generation"], 2);
    let shadow_position = status["rebuild"]["position"].clone();

    // A restart with a shadow keeps it: same generation, from its checkpoint.
    host.restart().await;
    let status = wait_status(&host, NAME, "shadow resumed", |s| {
        s["rebuild"]["caught_up"] == true
    })
    .await;
    assert_eq!(status["generation"], 1, "{status}");
    assert_eq!(status["rebuild"]["generation"], 2, "{status}");
    assert_eq!(status["rebuild"]["mode"], "shadow", "{status}");
    assert_eq!(status["rebuild"]["position"], shadow_position, "{status}");

    let promoted = promote(&host, NAME).await;
    promoted.expect(202, "");
    assert_eq!(promoted.body["generation"], 2);
    let status = wait_status(&host, NAME, "promoted", |s| {
        s["generation"] == 2 && s["rebuild"].is_null()
    })
    .await;
    let v2 = status["plugin"].clone();
    let served_at = status["position"].as_u64().expect("position");

    // The history records the promotion.
    let history = host.get(&format!("/plugins/{NAME}/history")).await;
    let versions = &history.body["versions"];
    assert_eq!(versions[0]["hash"], v2, "{}", history.body);
    assert_eq!(versions[0]["mode"], "live", "{}", history.body);
    assert_eq!(versions[0]["source"], "promote", "{}", history.body);
    assert_eq!(versions[1]["hash"], v2, "{}", history.body);
    assert_eq!(versions[1]["mode"], "shadow", "{}", history.body);

    // Restarts resume what serves: generation 2, from its checkpoint.
    for _ in 0..2 {
        host.restart().await;
        assert_resumed_as_running(&host, 2, served_at).await;
    }
    let history = host.get(&format!("/plugins/{NAME}/history")).await;
    assert_eq!(history.body["versions"][0]["source"], "promote");

    // It goes on from there with the promoted logic.
    let id = gold
        .iter()
        .next()
        .and_then(|k| k.strip_prefix("account-"))
        .expect("a gold account")
        .to_string();
    let later = deposit(&host, &id, 1).await;
    let row = row_at(&host, NAME, &format!("account-{id}"), position(&later)).await;
    row.expect(200, "");
    assert_eq!(row.body["tier"], "gold", "{}", row.body);
    let status = host.get(&format!("/projections/{NAME}")).await.body;
    assert_eq!(status["generation"], 2, "{status}");
    host.stop().await;
}

#[tokio::test]
async fn a_promoted_shadow_serves_after_restarts_on_sqlite() {
    a_promoted_shadow_serves_after_restarts(None).await;
}

#[tokio::test]
async fn a_promoted_shadow_serves_after_restarts_on_postgres() {
    let Some(db) =
        ScratchDatabase::for_test("a_promoted_shadow_serves_after_restarts_on_postgres").await
    else {
        return;
    };
    a_promoted_shadow_serves_after_restarts(Some(&db)).await;
}

#[tokio::test]
async fn a_dropped_shadow_stays_dropped_after_a_restart() {
    let mut host = host_on(None).await;
    let (_, status) = seeded_with_a_shadow(&host).await;
    let v1 = status["plugin"].clone();
    let served_at = status["position"].as_u64().expect("position");
    drop_shadow(&host, NAME).await.expect(200, "");
    let history = host.get(&format!("/plugins/{NAME}/history")).await;
    assert_eq!(history.body["versions"][0]["hash"], v1);
    assert_eq!(history.body["versions"][0]["source"], "drop-shadow");
    host.restart().await;
    assert_resumed_as_running(&host, 1, served_at).await;
    let status = host.get(&format!("/projections/{NAME}")).await.body;
    assert_eq!(status["plugin"], v1);
    host.stop().await;
}

#[tokio::test]
async fn deploying_the_shadow_version_live_promotes_the_shadow() {
    let mut host = host_on(None).await;
    let (_, status) = seeded_with_a_shadow(&host).await;
    assert_eq!(status["rebuild"]["generation"], 2);
    // The same bytes, live: the shadow switches over, not a new build.
    deploy(&host, NAME, artifacts::FIXTURE_BALANCES_V2, "live").await;
    let status = wait_status(&host, NAME, "switched to the shadow", |s| {
        s["generation"] == 2 && s["rebuild"].is_null()
    })
    .await;
    assert_eq!(status["state"], "running", "{status}");
    host.restart().await;
    let status = wait_status(&host, NAME, "resumed", |s| s["lag"] == 0).await;
    assert_eq!(status["generation"], 2, "{status}");
    assert!(status["rebuild"].is_null(), "{status}");
    host.stop().await;
}

async fn the_shadow_rows_and_both_values_of_a_diff_can_be_read(db: Option<&ScratchDatabase>) {
    let mut host = host_on(db).await;
    let (gold, last) = seeded(&host).await;
    // No shadow yet; none of a projection that does not exist.
    host.get(&format!(
        "/projections/{NAME}/rows/account-000?generation=shadow"
    ))
    .await
    .expect(404, "not_found");
    host.get("/projections/nope/rows/account-000?generation=shadow")
        .await
        .expect(404, "not_found");
    let status = with_a_shadow(&host, last).await;
    let shadow_position = status["rebuild"]["position"].as_u64().expect("position");

    // One row of each generation: the shadow's has the v2 field.
    let active = host
        .get(&format!("/projections/{NAME}/rows/account-002"))
        .await;
    active.expect(200, "");
    assert!(active.body.get("tier").is_none(), "{}", active.body);
    let shadow = host
        .get(&format!(
            "/projections/{NAME}/rows/account-002?generation=shadow"
        ))
        .await;
    shadow.expect(200, "");
    assert_eq!(shadow.body["tier"], "gold", "{}", shadow.body);
    assert_eq!(shadow.body["balance"], active.body["balance"]);
    assert_eq!(
        shadow.headers["kiln-position"].to_str().ok(),
        Some(shadow_position.to_string().as_str())
    );
    host.get(&format!(
        "/projections/{NAME}/rows/account-002?generation=active"
    ))
    .await
    .expect(200, "");

    // A page of the shadow's rows.
    let page = host
        .get(&format!(
            "/projections/{NAME}/rows?prefix=account-&generation=shadow&limit=100"
        ))
        .await;
    page.expect(200, "");
    let tiered: std::collections::BTreeSet<String> = page.body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["value"]["tier"] == "gold")
        .filter_map(|r| r["key"].as_str().map(str::to_string))
        .collect();
    assert_eq!(tiered, gold, "{}", page.body);
    assert_eq!(page.body["position"], shadow_position);

    // The shadow is not waited on; other generations are not named so.
    host.get(&format!(
        "/projections/{NAME}/rows/account-002?generation=shadow&min_position=1"
    ))
    .await
    .expect(400, "invalid_request");
    host.get(&format!(
        "/projections/{NAME}/rows/account-002?generation=2"
    ))
    .await
    .expect(400, "invalid_request");

    // The diff names both values of every changed key.
    let diff = host
        .get(&format!("/projections/{NAME}/diff?sample=100"))
        .await;
    diff.expect(200, "");
    let values = diff.body["changed"]["values"].as_array().expect("values");
    let keys: std::collections::BTreeSet<String> = values
        .iter()
        .filter_map(|v| v["key"].as_str().map(str::to_string))
        .collect();
    assert_eq!(keys, gold, "{}", diff.body);
    for v in values {
        assert!(v["old"].get("tier").is_none(), "{v}");
        assert_eq!(v["new"]["tier"], "gold", "{v}");
        assert_eq!(v["old"]["balance"], v["new"]["balance"], "{v}");
        assert!(v["old"]["balance"].as_i64() >= Some(1000), "{v}");
    }

    // Dropped: no shadow to read.
    drop_shadow(&host, NAME).await.expect(200, "");
    host.get(&format!(
        "/projections/{NAME}/rows/account-002?generation=shadow"
    ))
    .await
    .expect(404, "not_found");
    host.stop().await;
}

#[tokio::test]
async fn the_shadow_rows_and_both_values_of_a_diff_can_be_read_on_sqlite() {
    the_shadow_rows_and_both_values_of_a_diff_can_be_read(None).await;
}

#[tokio::test]
async fn the_shadow_rows_and_both_values_of_a_diff_can_be_read_on_postgres() {
    let Some(db) = ScratchDatabase::for_test(
        "the_shadow_rows_and_both_values_of_a_diff_can_be_read_on_postgres",
    )
    .await
    else {
        return;
    };
    the_shadow_rows_and_both_values_of_a_diff_can_be_read(Some(&db)).await;
}

/// A host running the poison fixture, failed on a `Withdrawn`; its position.
async fn failed_poison_counter() -> (TestHost, u64) {
    let host = TestHost::start().await;
    deploy(&host, "poison_counter", artifacts::FIXTURE_POISON, "live").await;
    open(&host, "1", "ann").await;
    deposit(&host, "1", 10).await;
    let poison_at = position(&withdraw(&host, "1", 3).await);
    wait_status(&host, "poison_counter", "failed", |s| {
        s["state"] == "failed"
    })
    .await;
    (host, poison_at)
}

#[tokio::test]
async fn a_read_waiting_on_a_failed_projection_answers_at_once_with_the_failure() {
    let (mut host, poison_at) = failed_poison_counter().await;
    let later = position(&deposit(&host, "1", 5).await);
    let started = Instant::now();
    let read = host
        .get(&format!(
            "/projections/poison_counter/rows/count-Deposited?min_position={later}&timeout_ms=20000"
        ))
        .await;
    let took = started.elapsed();
    read.expect(503, "projection_failed");
    assert!(
        took < Duration::from_secs(10),
        "answered at once, not after the 20 s wait: {took:?}"
    );
    let details = &read.body["error"]["details"];
    assert_eq!(details["state"], "failed", "{}", read.body);
    assert_eq!(details["position"], poison_at - 1, "{}", read.body);
    assert_eq!(details["min_position"], later, "{}", read.body);
    assert_eq!(details["error"]["position"], poison_at, "{}", read.body);
    assert_eq!(details["error"]["event_type"], "Withdrawn", "{}", read.body);
    let message = details["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("deliberate panic"), "{}", read.body);
    assert!(read.message().contains("deliberate panic"), "{}", read.body);

    // The rows list says the same; a read of what it has processed answers.
    let page = host
        .get(&format!(
            "/projections/poison_counter/rows?min_position={later}&timeout_ms=20000"
        ))
        .await;
    page.expect(503, "projection_failed");
    host.get(&format!(
        "/projections/poison_counter/rows/count-Deposited?min_position={}",
        poison_at - 1
    ))
    .await
    .expect(200, "");
    host.get("/projections/poison_counter/rows/count-Deposited")
        .await
        .expect(200, "");
    assert!(head(&host).await >= later);
    host.stop().await;
}

#[tokio::test]
async fn a_resume_that_fails_again_on_the_same_event_says_so() {
    let (mut host, poison_at) = failed_poison_counter().await;
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
    assert!(again.message().contains("failed again"), "{}", again.body);
    assert!(
        again.message().contains("deliberate panic"),
        "{}",
        again.body
    );
    let details = &again.body["error"]["details"];
    assert_eq!(details["state"], "failed", "{}", again.body);
    assert_eq!(details["error"]["position"], poison_at, "{}", again.body);
    assert_eq!(details["position"], poison_at - 1, "{}", again.body);
    let status = host.get("/projections/poison_counter").await.body;
    assert_eq!(status["state"], "failed", "{status}");

    // Skipping it succeeds, and says where it stands.
    let skipped = host.send(resume(true)).await;
    skipped.expect(200, "");
    assert_eq!(skipped.body["resumed"], 1, "{}", skipped.body);
    assert_eq!(skipped.body["state"], "running", "{}", skipped.body);
    host.stop().await;
}
