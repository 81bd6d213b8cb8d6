//! Listing and deploying plugins; admin authorization.

use serde_json::json;

use crate::common::{ADMIN_TOKEN, TestHost, artifacts, cmd};

#[tokio::test]
async fn plugins_are_listed_with_kind_and_hash() {
    let mut h = TestHost::start().await;
    let r = h.get("/plugins").await;
    r.expect(200, "");
    let list = r.body.as_array().unwrap();
    let bank = list
        .iter()
        .find(|p| p["name"] == "bank_account")
        .expect("bank_account listed");
    assert_eq!(bank["kind"], "aggregate");
    assert!(bank["hash"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        bank["size"].as_u64().unwrap(),
        std::fs::metadata(artifacts::BANK_ACCOUNT).unwrap().len()
    );
    assert!(bank["loaded_at"].as_str().unwrap().ends_with('Z'));
    h.stop().await;
}

#[tokio::test]
async fn deploy_needs_the_admin_token() {
    let mut h = TestHost::start().await;
    let bytes = std::fs::read(artifacts::BANK_ACCOUNT).unwrap();
    let put = |token: Option<&str>| {
        let req = h
            .client
            .put(h.url("/plugins/bank_copy"))
            .body(bytes.clone());
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    };
    h.send(put(None)).await.expect(401, "unauthorized");
    h.send(put(Some("wrong"))).await.expect(401, "unauthorized");
    let r = h.send(put(Some(ADMIN_TOKEN))).await;
    r.expect(200, "");
    assert_eq!(r.body["name"], "bank_copy");
    assert_eq!(r.body["kind"], "aggregate");
    // The new plugin serves the next command.
    h.command("bank_copy", "1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    // Bytes that are not a component, and a bad name.
    h.send(
        h.client
            .put(h.url("/plugins/junk"))
            .bearer_auth(ADMIN_TOKEN)
            .body("hello"),
    )
    .await
    .expect(400, "invalid_request");
    h.send(
        h.client
            .put(h.url("/plugins/Bad-Name"))
            .bearer_auth(ADMIN_TOKEN)
            .body(bytes.clone()),
    )
    .await
    .expect(400, "invalid_request");
    h.stop().await;
}

#[tokio::test]
async fn admin_routes_are_locked_without_a_configured_token() {
    let mut h = TestHost::start_with(|c| c.admin_token = None).await;
    let r = h
        .send(
            h.client
                .put(h.url("/plugins/x"))
                .bearer_auth("anything")
                .body("x"),
        )
        .await;
    r.expect(401, "unauthorized");
    assert!(
        r.message().contains("KILN_ADMIN_TOKEN"),
        "says how to set one: {}",
        r.body
    );
    h.stop().await;
}

#[tokio::test]
async fn a_new_aggregate_version_serves_the_next_command_and_refolds_state() {
    // Snapshots every event, so stale state would be everywhere: in the
    // cache and in the snapshot table, both under the old plugin's hash.
    let mut h = TestHost::start_with(|c| c.pipeline.snapshot_every = 1).await;
    h.command("bank_account", "h1", cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
    h.command("bank_account", "h1", cmd("Deposit", json!({"amount": 9})))
        .await
        .expect(200, "");
    h.command("bank_account", "h1", cmd("Deposit", json!({"amount": 1})))
        .await
        .expect(200, "");
    let s = h.get("/streams/bank_account-h1/state").await;
    assert_eq!(s.body["state"]["balance"], 10);
    // New logic under the same name: a fixture that folds any event into a
    // count. Its state can only come from refolding the events with it.
    let bytes = std::fs::read(artifacts::FIXTURE_SNOOP).unwrap();
    let r = h.deploy("bank_account", bytes).await;
    r.expect(200, "");
    let s = h.get("/streams/bank_account-h1/state").await;
    s.expect(200, "");
    assert_eq!(
        s.body["state"],
        json!({"events_applied": 3}),
        "refolded by the new logic"
    );
    // The next command is decided by the new version too.
    let d = h
        .command("bank_account", "h1", cmd("Snoop", json!({})))
        .await;
    d.expect(200, "");
    assert_eq!(d.body["events"][0]["type"], "Snooped");
    assert_eq!(d.body["version"], 4);
    h.stop().await;
}

#[tokio::test]
async fn health_readiness_metrics_openapi() {
    let mut h = TestHost::start().await;
    h.get("/healthz").await.expect(200, "");
    let r = h.get("/readyz").await;
    r.expect(200, "");
    assert!(r.body["plugins"].as_u64().unwrap() >= 2);
    h.command("bank_account", "x", cmd("Open", json!({"owner": "a"})))
        .await
        .expect(200, "");
    h.command("bank_account", "x", cmd("Open", json!({"owner": "a"})))
        .await
        .expect(422, "rejected");
    let m = h
        .client
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("kiln_commands_total{outcome=\"ok\"} 1"), "{m}");
    assert!(
        m.contains("kiln_commands_total{outcome=\"rejected\"} 1"),
        "{m}"
    );
    assert!(m.contains("kiln_head_position 1"), "{m}");
    let o = h.get("/openapi.json").await;
    o.expect(200, "");
    assert_eq!(o.body["openapi"], "3.1.0");
    for path in [
        "/commands/{aggregate}/{id}",
        "/streams/{stream_id}/events",
        "/streams/{stream_id}/state",
        "/events",
        "/plugins",
        "/plugins/{name}/history",
        "/plugins/{name}/rollback",
        "/projections",
        "/projections/{name}",
        "/projections/{name}/rows",
        "/projections/{name}/rows/{key}",
        "/projections/{name}/rebuild",
        "/projections/{name}/resume",
        "/projections/{name}/diff",
        "/projections/{name}/promote",
        "/projections/{name}/shadow",
        "/sagas",
        "/sagas/{name}",
        "/sagas/{name}/resume",
        "/sagas/{name}/{instance}",
        "/dead-letters",
        "/dead-letters/{id}/retry",
    ] {
        assert!(o.body["paths"][path].is_object(), "{path} documented");
    }
    h.stop().await;
}

#[tokio::test]
async fn readyz_is_503_without_plugins() {
    let mut h = TestHost::start_with(|c| c.plugins_dir = None).await;
    h.get("/readyz").await.expect(503, "unavailable");
    h.stop().await;
}

/// Messages name a plugin's kind with the right article ("an aggregate").
#[tokio::test]
async fn messages_name_kinds_in_plain_english() {
    let mut h = TestHost::start().await;
    let bank = std::fs::read(artifacts::BANK_ACCOUNT).unwrap();
    let r = h.deploy("account_balances", bank).await;
    r.expect(422, "invalid_plugin");
    assert_eq!(
        r.message(),
        "plugin account_balances is a projection; an aggregate cannot replace it under the same name"
    );
    let r = h
        .command("account_balances", "x", cmd("Open", json!({})))
        .await;
    r.expect(404, "not_found");
    assert_eq!(
        r.message(),
        "plugin account_balances is a projection, not an aggregate"
    );
    h.stop().await;
}
