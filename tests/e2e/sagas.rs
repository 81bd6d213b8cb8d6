//! Sagas over HTTP: the transfer saga in all its paths, compensation in
//! reverse order, dead letters and their retry, a trapping saga.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{ADMIN_TOKEN, TestHost, artifacts, cmd};

/// Open account `id` with `balance` (and an overdraft limit).
async fn open(h: &TestHost, id: &str, balance: i64, overdraft: i64) {
    h.command(
        "bank_account",
        id,
        cmd("Open", json!({"owner": id, "overdraft_limit": overdraft})),
    )
    .await
    .expect(200, "");
    if balance > 0 {
        h.command(
            "bank_account",
            id,
            cmd("Deposit", json!({"amount": balance})),
        )
        .await
        .expect(200, "");
    }
}

async fn transfer(h: &TestHost, id: &str, from: &str, to: &str, amount: i64, timeout_ms: i64) {
    h.command(
        "transfer",
        id,
        cmd(
            "Request",
            json!({"from": from, "to": to, "amount": amount, "timeout_ms": timeout_ms}),
        ),
    )
    .await
    .expect(200, "");
}

async fn transfer_state(h: &TestHost, id: &str) -> Value {
    let a = h.get(&format!("/streams/transfer-{id}/state")).await;
    a.expect(200, "");
    a.body["state"].clone()
}

/// The outcomes recorded for each command step in an instance's history.
fn outcomes(instance: &Value) -> Vec<(String, String, bool, String)> {
    instance["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|e| e["kind"] == "command")
                .map(|e| {
                    (
                        format!(
                            "{}-{}",
                            e["aggregate"].as_str().unwrap_or(""),
                            e["id"].as_str().unwrap_or("")
                        ),
                        e["type"].as_str().unwrap_or("").to_string(),
                        e["compensating"].as_bool().unwrap_or(false),
                        e["outcome"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn transfer_plugins(bank: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        (bank, "bank_account"),
        (artifacts::TRANSFER, "transfer"),
        (artifacts::TRANSFER_SAGA, "transfer_saga"),
    ]
}

/// Success, insufficient funds, a closed target (compensated), and a target
/// that never answers (timeout, compensated): balances exact after each.
/// The bank is the flaky fixture: bank_account's exact logic, except that a
/// deposit to an account named `unreachable-…` traps.
#[tokio::test]
async fn transfer_saga_in_all_its_paths() {
    let mut h =
        TestHost::start_with_plugins(&transfer_plugins(artifacts::FIXTURE_FLAKY_BANK), |c| {
            c.sagas.retry_base = Duration::from_millis(300);
            c.sagas.retry_max = Duration::from_millis(300);
        })
        .await;
    open(&h, "a", 100, 0).await;
    open(&h, "b", 0, 0).await;
    open(&h, "closed", 0, 0).await;
    h.command("bank_account", "closed", cmd("Close", json!({})))
        .await
        .expect(200, "");
    open(&h, "unreachable-1", 0, 0).await;

    // Success.
    transfer(&h, "ok", "a", "b", 30, 60_000).await;
    let i = h.wait_saga("transfer_saga", "ok", "completed").await;
    assert_eq!(transfer_state(&h, "ok").await["status"], "completed");
    assert_eq!((h.balance("a").await, h.balance("b").await), (70, 30));
    assert_eq!(
        outcomes(&i),
        vec![
            (
                "bank_account-a".into(),
                "Withdraw".into(),
                false,
                "applied".into()
            ),
            (
                "bank_account-b".into(),
                "Deposit".into(),
                false,
                "applied".into()
            ),
            (
                "transfer-ok".into(),
                "Complete".into(),
                false,
                "applied".into()
            ),
        ]
    );
    // The commands carry the instance as correlation id.
    let events = h.get("/events?from_position=1&types=Deposited").await;
    let deposit = events.body["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["stream_id"] == "bank_account-b"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(deposit["metadata"]["correlation_id"], "ok", "{deposit}");
    assert_eq!(deposit["metadata"]["saga"], "transfer_saga");

    // Insufficient funds: the withdrawal is refused, the transfer fails with the reason.
    transfer(&h, "poor", "a", "b", 500, 60_000).await;
    h.wait_saga("transfer_saga", "poor", "completed").await;
    let t = transfer_state(&h, "poor").await;
    assert_eq!(t["status"], "failed");
    assert!(
        t["reason"]
            .as_str()
            .unwrap_or("")
            .contains("insufficient funds"),
        "{t}"
    );
    assert_eq!((h.balance("a").await, h.balance("b").await), (70, 30));

    // A closed target: withdrawn, deposit refused, refunded.
    transfer(&h, "shut", "a", "closed", 20, 60_000).await;
    let i = h.wait_saga("transfer_saga", "shut", "completed").await;
    let t = transfer_state(&h, "shut").await;
    assert_eq!(t["status"], "failed");
    assert!(t["reason"].as_str().unwrap_or("").contains("closed"), "{t}");
    assert_eq!((h.balance("a").await, h.balance("closed").await), (70, 0));
    let o = outcomes(&i);
    assert_eq!(
        o[1],
        (
            "bank_account-closed".into(),
            "Deposit".into(),
            false,
            "refused".into()
        )
    );
    assert_eq!(
        o[2],
        (
            "bank_account-a".into(),
            "Deposit".into(),
            true,
            "applied".into()
        )
    );

    // A target that never answers: the timer gives up on the deposit
    // (cancelled while it waits for a retry) and refunds the source.
    transfer(&h, "slow", "a", "unreachable-1", 10, 1_000).await;
    let i = h.wait_saga("transfer_saga", "slow", "completed").await;
    let t = transfer_state(&h, "slow").await;
    assert_eq!(t["status"], "failed");
    assert!(
        t["reason"].as_str().unwrap_or("").contains("timed out"),
        "{t}"
    );
    assert_eq!(
        (h.balance("a").await, h.balance("unreachable-1").await),
        (70, 0)
    );
    let o = outcomes(&i);
    assert!(
        o.iter()
            .any(|(s, ty, _, out)| s == "bank_account-unreachable-1"
                && ty == "Deposit"
                && out == "retry"),
        "{o:?}"
    );
    assert!(
        o.iter()
            .any(|(s, ty, _, out)| s == "bank_account-unreachable-1"
                && ty == "Deposit"
                && out == "cancelled"),
        "{o:?}"
    );
    assert!(
        o.iter().any(|(s, ty, comp, out)| s == "bank_account-a"
            && ty == "Deposit"
            && *comp
            && out == "applied"),
        "{o:?}"
    );
    assert!(
        i["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["kind"] == "timer")),
        "{i}"
    );

    // Money is neither created nor lost; metrics and status show the saga.
    let total = h.balance("a").await
        + h.balance("b").await
        + h.balance("closed").await
        + h.balance("unreachable-1").await;
    assert_eq!(total, 100);
    let s = h.get("/sagas/transfer_saga").await;
    s.expect(200, "");
    assert_eq!(s.body["instances"]["completed"], 4, "{}", s.body);
    assert_eq!(s.body["instances"]["outbox"], 0, "{}", s.body);
    let metrics = h.get("/metrics").await;
    let text = metrics.body.as_str().unwrap_or("");
    assert!(
        text.contains("kiln_saga_instances{saga=\"transfer_saga\",status=\"completed\"} 4"),
        "{text}"
    );
    h.get("/sagas/transfer_saga/nope")
        .await
        .expect(404, "not_found");
    h.get("/sagas/nope/x").await.expect(404, "not_found");
    h.stop().await;
}

/// A saga of three steps whose third is refused undoes the first two, last
/// first, and each undo runs only after the one before it is applied.
#[tokio::test]
pub async fn three_steps_are_compensated_in_reverse_order() {
    let mut h = TestHost::start_with_plugins(
        &[
            (artifacts::BANK_ACCOUNT, "bank_account"),
            (artifacts::TRANSFER, "transfer"),
            (artifacts::FIXTURE_THREE_STEPS, "fixture_three_steps"),
        ],
        |_| {},
    )
    .await;
    open(&h, "a", 100, 0).await;
    open(&h, "b", 0, 0).await;
    transfer(&h, "x1", "a", "b", 40, 60_000).await;
    let i = h.wait_saga("fixture_three_steps", "x1", "completed").await;
    assert_eq!((h.balance("a").await, h.balance("b").await), (100, 0));
    let o = outcomes(&i);
    let expected: Vec<(String, String, bool, String)> = vec![
        (
            "bank_account-a".into(),
            "Withdraw".into(),
            false,
            "applied".into(),
        ),
        (
            "bank_account-b".into(),
            "Deposit".into(),
            false,
            "applied".into(),
        ),
        (
            "bank_account-b".into(),
            "Withdraw".into(),
            false,
            "refused".into(),
        ),
        (
            "bank_account-b".into(),
            "Withdraw".into(),
            true,
            "applied".into(),
        ),
        (
            "bank_account-a".into(),
            "Deposit".into(),
            true,
            "applied".into(),
        ),
    ];
    assert_eq!(o, expected, "{i}");
    // The log agrees: the undo of step 2 is committed before the undo of step 1.
    let events = h.get("/events?from_position=1").await;
    let mine: Vec<(String, String)> = events.body["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["metadata"]["saga_instance"] == "x1")
                .map(|e| {
                    (
                        e["stream_id"].as_str().unwrap_or("").to_string(),
                        e["type"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        mine,
        vec![
            ("bank_account-a".to_string(), "Withdrawn".to_string()),
            ("bank_account-b".to_string(), "Deposited".to_string()),
            ("bank_account-b".to_string(), "Withdrawn".to_string()),
            ("bank_account-a".to_string(), "Deposited".to_string()),
        ]
    );
    h.stop().await;
}

/// A compensation that keeps failing (the refund traps in a broken bank)
/// ends in the dead-letter list and the instance shows `failed`; once the
/// bank is fixed, an operator's retry completes it.
#[tokio::test]
pub async fn compensation_that_keeps_failing_is_dead_lettered_then_retried() {
    let mut h =
        TestHost::start_with_plugins(&transfer_plugins(artifacts::FIXTURE_FLAKY_BANK), |c| {
            c.sagas.max_attempts = 3;
            c.sagas.retry_base = Duration::from_millis(20);
            c.sagas.retry_max = Duration::from_millis(50);
        })
        .await;
    // The source can only be refunded by a deposit, which traps for it; it
    // has an overdraft so the withdrawal works.
    open(&h, "unreachable-src", 0, 100).await;
    open(&h, "closed", 0, 0).await;
    h.command("bank_account", "closed", cmd("Close", json!({})))
        .await
        .expect(200, "");
    transfer(&h, "stuck", "unreachable-src", "closed", 25, 60_000).await;
    let i = h.wait_saga("transfer_saga", "stuck", "failed").await;
    assert_eq!(h.balance("unreachable-src").await, -25);
    assert!(
        i["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["outcome"] == "dead_letter")),
        "{i}"
    );
    let letters = h.get("/dead-letters").await;
    letters.expect(200, "");
    let list = letters.body["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(list.len(), 1, "{}", letters.body);
    let letter = &list[0];
    assert_eq!(letter["saga"], "transfer_saga");
    assert_eq!(letter["instance"], "stuck");
    assert_eq!(letter["command"]["type"], "Deposit");
    assert_eq!(letter["compensating"], true);
    assert_eq!(
        letter["errors"].as_array().map(Vec::len),
        Some(3),
        "{letter}"
    );
    assert!(
        letter["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unreachable"),
        "{letter}"
    );
    let id = letter["id"].as_u64().unwrap_or(0);

    // Retry needs the admin token.
    let r = h
        .send(h.client.post(h.url(&format!("/dead-letters/{id}/retry"))))
        .await;
    r.expect(401, "unauthorized");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    // Fix the cause: deploy the real bank.
    let bytes = std::fs::read(artifacts::BANK_ACCOUNT).expect("component");
    h.send(
        h.client
            .put(h.url("/plugins/bank_account"))
            .header("Authorization", &auth)
            .body(bytes),
    )
    .await
    .expect(200, "");
    let r = h
        .send(
            h.client
                .post(h.url(&format!("/dead-letters/{id}/retry")))
                .header("Authorization", &auth),
        )
        .await;
    r.expect(202, "");
    h.wait_saga("transfer_saga", "stuck", "completed").await;
    assert_eq!(h.balance("unreachable-src").await, 0);
    assert_eq!(transfer_state(&h, "stuck").await["status"], "failed");
    let letters = h.get("/dead-letters").await;
    assert_eq!(letters.body["dead_letters"], json!([]), "{}", letters.body);
    h.send(
        h.client
            .post(h.url(&format!("/dead-letters/{id}/retry")))
            .header("Authorization", &auth),
    )
    .await
    .expect(404, "not_found");
    h.stop().await;
}

/// A saga that traps on one event stops alone, visibly; the other saga,
/// a projection and commands go on; skipping the event resumes it.
#[tokio::test]
pub async fn a_trapping_saga_fails_alone_until_skipped() {
    let mut plugins = transfer_plugins(artifacts::BANK_ACCOUNT);
    plugins.push((artifacts::FIXTURE_SAGA_TRAP, "fixture_saga_trap"));
    plugins.push((artifacts::ACCOUNT_BALANCES, "account_balances"));
    let mut h = TestHost::start_with_plugins(&plugins, |_| {}).await;
    open(&h, "a", 1000, 0).await;
    open(&h, "b", 0, 0).await;
    transfer(&h, "bad", "a", "b", 666, 60_000).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = h.get("/sagas/fixture_saga_trap").await;
        if s.body["state"] == "failed" {
            break s.body;
        }
        assert!(Instant::now() < deadline, "{}", s.body);
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        status["error"].as_str().unwrap_or("").contains("666"),
        "{status}"
    );
    // The other saga completes the same transfer, and the next one.
    h.wait_saga("transfer_saga", "bad", "completed").await;
    transfer(&h, "next", "a", "b", 5, 60_000).await;
    let done = h.wait_saga("transfer_saga", "next", "completed").await;
    let position = done["history"]
        .as_array()
        .and_then(|h| h.iter().filter_map(|e| e["position"].as_u64()).max())
        .unwrap_or(0);
    assert_eq!((h.balance("a").await, h.balance("b").await), (329, 671));
    let row = h
        .get(&format!(
            "/projections/account_balances/rows/account-b?min_position={position}"
        ))
        .await;
    row.expect(200, "");
    assert_eq!(row.body["balance"], 671, "{}", row.body);
    let s = h.get("/sagas/fixture_saga_trap").await;
    assert_eq!(s.body["state"], "failed", "still waits for an operator");
    let metrics = h.get("/metrics").await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap_or("")
            .contains("kiln_saga_failed{saga=\"fixture_saga_trap\"} 1")
    );

    // Skip the poison event: the saga goes on with the next transfer.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    h.send(
        h.client
            .post(h.url("/sagas/fixture_saga_trap/resume"))
            .header("Authorization", &auth)
            .json(&json!({"skip": true})),
    )
    .await
    .expect(200, "");
    h.wait_saga("fixture_saga_trap", "next", "completed").await;
    assert_eq!(
        h.get("/sagas/fixture_saga_trap").await.body["state"],
        "running"
    );
    h.get("/sagas/fixture_saga_trap/bad")
        .await
        .expect(404, "not_found");
    h.send(
        h.client
            .post(h.url("/sagas/fixture_saga_trap/resume"))
            .header("Authorization", &auth),
    )
    .await
    .expect(409, "conflict");
    h.stop().await;
}

/// A saga instance's timer and outbox survive a restart.
#[tokio::test]
async fn a_timer_set_before_a_restart_fires_after_it() {
    let mut h =
        TestHost::start_with_plugins(&transfer_plugins(artifacts::FIXTURE_FLAKY_BANK), |c| {
            c.sagas.retry_base = Duration::from_millis(400);
            c.sagas.retry_max = Duration::from_millis(400);
        })
        .await;
    open(&h, "a", 50, 0).await;
    open(&h, "unreachable-2", 0, 0).await;
    transfer(&h, "later", "a", "unreachable-2", 10, 1_500).await;
    // Wait until the deposit is being retried, then restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let i = h.get("/sagas/transfer_saga/later").await;
        if outcomes(&i.body).iter().any(|o| o.3 == "retry") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", i.body);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    h.restart().await;
    h.wait_saga("transfer_saga", "later", "completed").await;
    assert_eq!(transfer_state(&h, "later").await["reason"], "timed out");
    assert_eq!(h.balance("a").await, 50);
    h.stop().await;
}

/// A client cannot write the metadata by which a saga recognises the events
/// of its own commands: a forged `Deposited` for a transfer whose deposit
/// never arrived is refused, appends nothing and moves no instance.
#[tokio::test]
async fn a_client_cannot_forge_a_sagas_metadata() {
    let mut h =
        TestHost::start_with_plugins(&transfer_plugins(artifacts::FIXTURE_FLAKY_BANK), |c| {
            c.sagas.retry_base = Duration::from_millis(200);
            c.sagas.retry_max = Duration::from_millis(200);
        })
        .await;
    open(&h, "a", 100, 0).await;
    open(&h, "unreachable-9", 0, 0).await;
    // The deposit traps and is retried: the instance waits in its deposit step.
    transfer(&h, "stuck", "a", "unreachable-9", 10, 600_000).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let i = h.get("/sagas/transfer_saga/stuck").await;
        let tried_deposit = i.body["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["type"] == "Deposit"));
        if tried_deposit || Instant::now() > deadline {
            assert_eq!(i.body["status"], "running", "{}", i.body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for key in ["saga", "saga_instance", "saga_step"] {
        let mut metadata =
            json!({"saga": "transfer_saga", "saga_instance": "stuck", "saga_step": 2});
        if let Some(m) = metadata.as_object_mut() {
            m.retain(|k, _| k == key);
        }
        let forged = h
            .command(
                "bank_account",
                "forge",
                json!({"type": "Open", "data": {"owner": "x"}, "metadata": metadata}),
            )
            .await;
        forged.expect(400, "invalid_request");
        assert!(forged.body.to_string().contains(key), "{}", forged.body);
    }
    open(&h, "forge", 0, 0).await;
    let forged = h
        .command(
            "bank_account",
            "forge",
            json!({"type": "Deposit", "data": {"amount": 10}, "metadata":
                {"saga": "transfer_saga", "saga_instance": "stuck", "saga_step": 2}}),
        )
        .await;
    forged.expect(400, "invalid_request");
    // Only the event of `open` is in the stream, and the instance
    // still waits for its deposit (nothing was appended that it could see).
    let stream = h.get("/streams/bank_account-forge/events").await;
    assert_eq!(stream.body["events"].as_array().map(Vec::len), Some(1));
    let i = h.get("/sagas/transfer_saga/stuck").await;
    assert_eq!(i.body["status"], "running", "{}", i.body);
    h.stop().await;
}
