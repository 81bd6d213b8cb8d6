//! The command endpoint's contract: statuses, expected versions,
//! idempotency, metadata, concurrency.

use std::sync::Arc;

use serde_json::json;

use crate::common::{TestHost, cmd};

#[tokio::test]
async fn expected_version_conflicts_are_409_with_details() {
    let mut h = TestHost::start().await;
    let mut open = cmd("Open", json!({"owner": "ann"}));
    open["expected_version"] = json!("no_stream");
    h.command("bank_account", "e1", open.clone())
        .await
        .expect(200, "");
    let r = h.command("bank_account", "e1", open).await;
    r.expect(409, "wrong_expected_version");
    assert_eq!(r.body["error"]["details"]["actual"], 1);
    assert_eq!(r.body["error"]["details"]["expected"], "no_stream");

    let mut deposit = cmd("Deposit", json!({"amount": 5}));
    deposit["expected_version"] = json!(1);
    h.command("bank_account", "e1", deposit.clone())
        .await
        .expect(200, "");
    // Stale: the stream is at 2 now.
    let r = h.command("bank_account", "e1", deposit).await;
    r.expect(409, "wrong_expected_version");
    assert_eq!(
        r.body["error"]["details"],
        json!({"expected": 1, "actual": 2})
    );
    assert!(r.message().contains("bank_account-e1"), "{}", r.body);

    let mut any = cmd("Deposit", json!({"amount": 5}));
    any["expected_version"] = json!("any");
    h.command("bank_account", "e1", any).await.expect(200, "");
    let mut bad = cmd("Deposit", json!({"amount": 5}));
    bad["expected_version"] = json!("latest");
    h.command("bank_account", "e1", bad)
        .await
        .expect(400, "invalid_request");
    h.stop().await;
}

#[tokio::test]
async fn idempotency_key_replays_the_original_result() {
    let mut h = TestHost::start().await;
    h.command("bank_account", "i1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    let key = [("Idempotency-Key", "dep-1")];
    let body = cmd("Deposit", json!({"amount": 7}));
    let first = h
        .command_with("bank_account", "i1", body.clone(), &key)
        .await;
    first.expect(200, "");
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = h
        .command_with("bank_account", "i1", body.clone(), &key)
        .await;
    again.expect(200, "");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body, "the original response, unchanged");
    let s = h.get("/streams/bank_account-i1/state").await;
    assert_eq!(s.body["state"]["balance"], 7, "appended once");
    assert_eq!(s.body["version"], 2);

    let other = h
        .command_with(
            "bank_account",
            "i1",
            cmd("Deposit", json!({"amount": 8})),
            &key,
        )
        .await;
    other.expect(409, "idempotency_conflict");
    // The same key on another stream is another request too.
    h.command_with("bank_account", "i2", body, &key)
        .await
        .expect(409, "idempotency_conflict");
    h.stop().await;
}

/// A retry of a command already applied answers with its first result
/// even when deciding it again now would fail: the funds it withdrew are
/// gone, and the stream is past the version it expected.
#[tokio::test]
async fn a_repeat_that_would_now_be_refused_replays_the_original_result() {
    let mut h = TestHost::start().await;
    h.command("bank_account", "r1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    h.command("bank_account", "r1", cmd("Deposit", json!({"amount": 10})))
        .await
        .expect(200, "");
    let key = [("Idempotency-Key", "withdraw-all")];
    let mut withdraw = cmd("Withdraw", json!({"amount": 10}));
    withdraw["expected_version"] = json!(2);
    let first = h
        .command_with("bank_account", "r1", withdraw.clone(), &key)
        .await;
    first.expect(200, "");
    // Without the key the same command is refused twice over.
    h.command("bank_account", "r1", cmd("Withdraw", json!({"amount": 10})))
        .await
        .expect(422, "rejected");
    h.command("bank_account", "r1", withdraw.clone())
        .await
        .expect(409, "wrong_expected_version");
    let again = h.command_with("bank_account", "r1", withdraw, &key).await;
    again.expect(200, "");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, first.body, "the original response, unchanged");
    let s = h.get("/streams/bank_account-r1/state").await;
    assert_eq!(s.body["state"]["balance"], 0, "withdrawn once");
    assert_eq!(s.body["version"], 3);
    h.stop().await;
}

#[tokio::test]
async fn concurrent_identical_requests_append_once() {
    let h = TestHost::start().await;
    h.command("bank_account", "i3", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    let h = Arc::new(h);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.command_with(
                "bank_account",
                "i3",
                cmd("Deposit", json!({"amount": 3})),
                &[("Idempotency-Key", "same")],
            )
            .await
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        let a = t.await.unwrap();
        a.expect(200, "");
        versions.push(a.body["version"].clone());
    }
    assert!(versions.iter().all(|v| *v == json!(2)), "{versions:?}");
    let s = h.get("/streams/bank_account-i3/state").await;
    assert_eq!(s.body["state"]["balance"], 3);
    let Ok(mut h) = Arc::try_unwrap(h) else {
        panic!("host still shared")
    };
    h.stop().await;
}

#[tokio::test]
async fn metadata_carries_correlation_and_causation() {
    let mut h = TestHost::start().await;
    let mut open = cmd("Open", json!({"owner": "ann"}));
    open["metadata"] = json!({"user": "ann", "correlation_id": "flow-1"});
    let r = h.command("bank_account", "m1", open).await;
    r.expect(200, "");
    let m = &r.body["events"][0]["metadata"];
    assert_eq!(m["user"], "ann");
    assert_eq!(m["correlation_id"], "flow-1");
    assert!(
        m["causation_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{m}"
    );
    let r = h
        .command("bank_account", "m1", cmd("Deposit", json!({"amount": 1})))
        .await;
    let m = &r.body["events"][0]["metadata"];
    assert_eq!(
        m["correlation_id"], m["causation_id"],
        "defaults to the command's id"
    );
    let mut bad = cmd("Deposit", json!({"amount": 1}));
    bad["metadata"] = json!([1, 2]);
    h.command("bank_account", "m1", bad)
        .await
        .expect(400, "invalid_request");
    h.stop().await;
}

#[tokio::test]
async fn request_errors_have_their_status() {
    let mut h = TestHost::start_with(|c| c.limits.body_bytes_max = 1024).await;
    // Unknown aggregate.
    h.command("nope", "1", cmd("Open", json!({})))
        .await
        .expect(404, "not_found");
    // Malformed JSON, missing type.
    let raw = |body: &'static str, ct: &'static str| {
        h.client
            .post(h.url("/commands/bank_account/r1"))
            .header("content-type", ct)
            .body(body)
    };
    h.send(raw("{not json", "application/json"))
        .await
        .expect(400, "invalid_request");
    h.send(raw("{\"data\": {}}", "application/json"))
        .await
        .expect(400, "invalid_request");
    // Not JSON at all.
    h.send(raw("type=Open", "application/x-www-form-urlencoded"))
        .await
        .expect(415, "unsupported_media_type");
    // Over the body limit.
    let big = json!({"type": "Open", "data": {"owner": "x".repeat(2000)}});
    let r = h.command("bank_account", "r1", big).await;
    r.expect(413, "too_large");
    assert_eq!(r.body["error"]["details"]["limit"], 1024);
    // Unknown route.
    h.get("/no/such/route").await.expect(404, "not_found");
    h.stop().await;
}

#[tokio::test]
async fn commands_on_one_stream_are_serialized() {
    let h = TestHost::start().await;
    h.command("bank_account", "c1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    let h = Arc::new(h);
    let mut tasks = Vec::new();
    for i in 0..48 {
        let h = h.clone();
        // Half on one stream, half spread over others.
        let id = if i % 2 == 0 {
            "c1".to_string()
        } else {
            format!("c-other-{i}")
        };
        tasks.push(tokio::spawn(async move {
            if id != "c1" {
                h.command("bank_account", &id, cmd("Open", json!({"owner": "o"})))
                    .await
                    .expect(200, "");
            }
            h.command("bank_account", &id, cmd("Deposit", json!({"amount": 2})))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect(200, "");
    }
    let s = h.get("/streams/bank_account-c1/state").await;
    assert_eq!(s.body["state"]["balance"], 48);
    assert_eq!(s.body["version"], 25);
    let events = h.get("/streams/bank_account-c1/events?limit=100").await;
    let versions: Vec<u64> = events.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        versions,
        (1..=25).collect::<Vec<_>>(),
        "versions without gaps"
    );
    let Ok(mut h) = Arc::try_unwrap(h) else {
        panic!("host still shared")
    };
    h.stop().await;
}

#[tokio::test]
async fn idempotency_keys_expire_after_the_window() {
    // Long enough that the replay below comes within it on a loaded machine.
    const WINDOW: std::time::Duration = std::time::Duration::from_millis(1500);
    let mut h = TestHost::start_with(|c| c.pipeline.idempotency_window = WINDOW).await;
    h.command("bank_account", "w1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    let key = [("Idempotency-Key", "short-lived")];
    let body = cmd("Deposit", json!({"amount": 1}));
    h.command_with("bank_account", "w1", body.clone(), &key)
        .await
        .expect(200, "");
    // The key was stored before the answer came.
    let keyed = std::time::Instant::now();
    let again = h
        .command_with("bank_account", "w1", body.clone(), &key)
        .await;
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let expired = keyed + WINDOW + std::time::Duration::from_millis(100);
    tokio::time::sleep_until(expired.into()).await;
    let later = h.command_with("bank_account", "w1", body, &key).await;
    later.expect(200, "");
    assert!(
        later.headers.get("idempotent-replayed").is_none(),
        "a new command once the window has passed"
    );
    assert_eq!(later.body["version"], 3);
    h.stop().await;
}
