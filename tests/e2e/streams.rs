//! Reading streams and the global log.

use serde_json::json;

use crate::common::{TestHost, cmd};

#[tokio::test]
async fn stream_events_page_in_version_order() {
    let mut h = TestHost::start().await;
    h.command("bank_account", "s1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    for _ in 0..4 {
        h.command("bank_account", "s1", cmd("Deposit", json!({"amount": 1})))
            .await
            .expect(200, "");
    }
    let p1 = h
        .get("/streams/bank_account-s1/events?from_version=1&limit=2")
        .await;
    p1.expect(200, "");
    assert_eq!(p1.body["events"].as_array().unwrap().len(), 2);
    assert_eq!(p1.body["next_version"], 3);
    let p2 = h
        .get("/streams/bank_account-s1/events?from_version=3&limit=10")
        .await;
    let versions: Vec<_> = p2.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].clone())
        .collect();
    assert_eq!(versions, vec![json!(3), json!(4), json!(5)]);
    assert_eq!(p2.body["next_version"], 6);
    let e = &p1.body["events"][0];
    for field in [
        "position",
        "stream_id",
        "version",
        "type",
        "schema",
        "data",
        "metadata",
        "recorded_at",
    ] {
        assert!(!e[field].is_null(), "{field} in {e}");
    }
    assert_eq!(e["schema"], 1);
    h.get("/streams/bank_account-none/events")
        .await
        .expect(404, "not_found");
    h.get("/streams/bank_account-none/state")
        .await
        .expect(404, "not_found");
    h.get("/streams/bank_account-s1/events?limit=0")
        .await
        .expect(400, "invalid_request");
    h.get("/streams/bank_account-s1/events?from_version=abc")
        .await
        .expect(400, "invalid_request");
    h.stop().await;
}

#[tokio::test]
async fn global_log_is_ordered_and_filterable() {
    let mut h = TestHost::start().await;
    h.command("bank_account", "g1", cmd("Open", json!({"owner": "a"})))
        .await
        .expect(200, "");
    h.command("workflow_execution", "g2", cmd("Start", json!({})))
        .await
        .expect(200, "");
    h.command("bank_account", "g1", cmd("Deposit", json!({"amount": 3})))
        .await
        .expect(200, "");
    h.command("bank_account", "g1", cmd("Withdraw", json!({"amount": 1})))
        .await
        .expect(200, "");
    let all = h.get("/events?from_position=1").await;
    all.expect(200, "");
    let positions: Vec<u64> = all.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, vec![1, 2, 3, 4]);
    assert_eq!(all.body["next_position"], 5);
    let typed = h.get("/events?types=Deposited,Withdrawn").await;
    let types: Vec<_> = typed.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(types, vec![json!("Deposited"), json!("Withdrawn")]);
    let page = h.get("/events?from_position=2&limit=2").await;
    let positions: Vec<u64> = page.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, vec![2, 3]);
    assert_eq!(page.body["next_position"], 4);
    h.get("/events?limit=100000")
        .await
        .expect(400, "invalid_request");
    h.stop().await;
}
