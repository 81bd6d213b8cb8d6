//! What was acknowledged survives a restart of the host.

use serde_json::json;

use crate::common::{TestHost, cmd};

#[tokio::test]
async fn events_state_and_idempotency_survive_a_restart() {
    let mut h = TestHost::start().await;
    h.command("bank_account", "d1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    let key = [("Idempotency-Key", "restart-1")];
    let first = h
        .command_with(
            "bank_account",
            "d1",
            cmd("Deposit", json!({"amount": 40})),
            &key,
        )
        .await;
    first.expect(200, "");
    h.restart().await;
    let s = h.get("/streams/bank_account-d1/state").await;
    s.expect(200, "");
    assert_eq!(s.body["version"], 2);
    assert_eq!(s.body["state"]["balance"], 40);
    // The key is remembered across the restart.
    let again = h
        .command_with(
            "bank_account",
            "d1",
            cmd("Deposit", json!({"amount": 40})),
            &key,
        )
        .await;
    again.expect(200, "");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body);
    // New appends continue the global order.
    let d = h
        .command("bank_account", "d1", cmd("Deposit", json!({"amount": 2})))
        .await;
    assert_eq!(d.body["position"], 3);
    assert_eq!(d.body["version"], 3);
    h.stop().await;
}

#[tokio::test]
async fn snapshots_and_long_replays_give_the_same_state() {
    // Snapshots every 10 events and replay pages of 16: a fresh host (empty
    // cache) must fold 250 events to the same state, from a snapshot, and
    // time travel must replay the pages from the start.
    let mut h = TestHost::start_with(|c| {
        c.pipeline.snapshot_every = 10;
        c.pipeline.replay_batch = 16;
    })
    .await;
    h.command("bank_account", "long", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    for _ in 0..249 {
        h.command("bank_account", "long", cmd("Deposit", json!({"amount": 2})))
            .await
            .expect(200, "");
    }
    h.restart().await;
    let s = h.get("/streams/bank_account-long/state").await;
    assert_eq!(s.body["version"], 250);
    assert_eq!(s.body["state"]["balance"], 498);
    let past = h
        .get("/streams/bank_account-long/state?at_version=125")
        .await;
    assert_eq!(past.body["state"]["balance"], 248);
    let d = h
        .command(
            "bank_account",
            "long",
            cmd("Withdraw", json!({"amount": 498})),
        )
        .await;
    d.expect(200, "");
    assert_eq!(d.body["version"], 251);
    h.stop().await;
}
