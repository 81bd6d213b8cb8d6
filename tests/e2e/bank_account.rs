//! The bank account's rules, over HTTP.

use serde_json::json;

use crate::common::{TestHost, cmd};

#[tokio::test]
async fn open_deposit_withdraw_close() {
    let mut h = TestHost::start().await;
    let a = h
        .command("bank_account", "1", cmd("Open", json!({"owner": "ann"})))
        .await;
    a.expect(200, "");
    assert_eq!(a.body["stream_id"], "bank_account-1");
    assert_eq!(a.body["version"], 1);
    assert_eq!(a.body["events"][0]["type"], "Opened");
    assert_eq!(a.body["events"][0]["data"]["owner"], "ann");
    assert_eq!(a.body["events"][0]["position"], a.body["position"]);

    let d = h
        .command("bank_account", "1", cmd("Deposit", json!({"amount": 50})))
        .await;
    d.expect(200, "");
    assert_eq!(d.body["version"], 2);
    assert_eq!(d.body["events"][0]["data"], json!({"amount": 50}));

    h.command("bank_account", "1", cmd("Withdraw", json!({"amount": 20})))
        .await
        .expect(200, "");
    let s = h.get("/streams/bank_account-1/state").await;
    s.expect(200, "");
    assert_eq!(s.body["version"], 3);
    assert_eq!(
        s.body["state"],
        json!({"status": "open", "owner": "ann", "balance": 30, "overdraft_limit": 0})
    );
    assert_eq!(s.headers["etag"], "\"3\"");

    h.command("bank_account", "1", cmd("Withdraw", json!({"amount": 30})))
        .await
        .expect(200, "");
    h.command("bank_account", "1", cmd("Close", json!({})))
        .await
        .expect(200, "");
    let s = h.get("/streams/bank_account-1/state").await;
    assert_eq!(s.body["state"]["status"], "closed");
    assert_eq!(s.body["state"]["balance"], 0);
    h.stop().await;
}

#[tokio::test]
async fn business_rules_are_rejected_with_422() {
    let mut h = TestHost::start().await;
    // Not open yet.
    for (t, data) in [
        ("Deposit", json!({"amount": 5})),
        ("Withdraw", json!({"amount": 5})),
        ("Close", json!({})),
    ] {
        let r = h.command("bank_account", "2", cmd(t, data)).await;
        r.expect(422, "rejected");
        assert!(r.message().contains("not open"), "{}", r.body);
    }
    h.command(
        "bank_account",
        "2",
        cmd("Open", json!({"owner": "bob", "overdraft_limit": 100})),
    )
    .await
    .expect(200, "");
    // Open twice.
    h.command("bank_account", "2", cmd("Open", json!({"owner": "bob"})))
        .await
        .expect(422, "rejected");
    // Overdraft: down to -100 is allowed, below is not.
    h.command("bank_account", "2", cmd("Withdraw", json!({"amount": 100})))
        .await
        .expect(200, "");
    let r = h
        .command("bank_account", "2", cmd("Withdraw", json!({"amount": 1})))
        .await;
    r.expect(422, "rejected");
    assert!(r.message().contains("insufficient funds"), "{}", r.body);
    assert_eq!(r.body["error"]["details"]["reason"], "insufficient_funds");
    // Close with a balance other than 0.
    h.command("bank_account", "2", cmd("Close", json!({})))
        .await
        .expect(422, "rejected");
    h.command("bank_account", "2", cmd("Deposit", json!({"amount": 100})))
        .await
        .expect(200, "");
    h.command("bank_account", "2", cmd("Close", json!({})))
        .await
        .expect(200, "");
    // Closed: everything is rejected, Open included.
    h.command("bank_account", "2", cmd("Open", json!({"owner": "bob"})))
        .await
        .expect(422, "rejected");
    h.command("bank_account", "2", cmd("Deposit", json!({"amount": 1})))
        .await
        .expect(422, "rejected");
    // A rejection appends nothing.
    let s = h.get("/streams/bank_account-2/state").await;
    assert_eq!(s.body["version"], 4);
    h.stop().await;
}

#[tokio::test]
async fn bad_input_is_invalid_command_400() {
    let mut h = TestHost::start().await;
    h.command("bank_account", "3", cmd("Open", json!({"owner": "cy"})))
        .await
        .expect(200, "");
    for body in [
        cmd("Deposit", json!({"amount": 0})),
        cmd("Deposit", json!({"amount": -5})),
        cmd("Withdraw", json!({"amount": 0})),
        cmd("Deposit", json!({})),
        cmd("Deposit", json!({"amount": "ten"})),
        cmd("Open", json!({"overdraft_limit": 5})),
        cmd("Open", json!({"owner": "x", "overdraft_limit": -1})),
        cmd("Explode", json!({})),
    ] {
        let r = h.command("bank_account", "3", body.clone()).await;
        r.expect(400, "invalid_command");
    }
    let s = h.get("/streams/bank_account-3/state").await;
    assert_eq!(s.body["version"], 1, "invalid commands append nothing");
    h.stop().await;
}

#[tokio::test]
async fn time_travel_by_version_and_time() {
    let mut h = TestHost::start().await;
    h.command("bank_account", "4", cmd("Open", json!({"owner": "di"})))
        .await
        .expect(200, "");
    let d = h
        .command("bank_account", "4", cmd("Deposit", json!({"amount": 10})))
        .await;
    let at = d.body["events"][0]["recorded_at"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    h.command("bank_account", "4", cmd("Deposit", json!({"amount": 5})))
        .await
        .expect(200, "");

    let v1 = h.get("/streams/bank_account-4/state?at_version=1").await;
    v1.expect(200, "");
    assert_eq!(v1.body["version"], 1);
    assert_eq!(v1.body["state"]["balance"], 0);
    let v2 = h.get("/streams/bank_account-4/state?at_version=2").await;
    assert_eq!(v2.body["state"]["balance"], 10);
    let now = h.get("/streams/bank_account-4/state").await;
    assert_eq!(now.body["state"]["balance"], 15);

    // `recorded_at` has millisecond precision; the second deposit came 20 ms later.
    let t = h
        .get(&format!(
            "/streams/bank_account-4/state?at_time={}",
            urlencode(&at)
        ))
        .await;
    t.expect(200, "");
    assert_eq!(t.body["version"], 2, "{}", t.body);
    assert_eq!(t.body["state"]["balance"], 10);

    h.get("/streams/bank_account-4/state?at_time=2000-01-01T00:00:00Z")
        .await
        .expect(404, "not_found");
    h.get("/streams/bank_account-4/state?at_version=9")
        .await
        .expect(404, "not_found");
    h.get("/streams/bank_account-4/state?at_time=yesterday")
        .await
        .expect(400, "invalid_request");
    h.get("/streams/bank_account-4/state?at_version=x")
        .await
        .expect(400, "invalid_request");
    h.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}
