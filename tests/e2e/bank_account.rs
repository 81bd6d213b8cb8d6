//! The bank account's rules, over HTTP, for each build of `bank_account`:
//! Rust, JavaScript and Python. Every scenario runs unchanged against the
//! three (a module per scenario, a test per build), and one test sends the
//! same commands to the three and compares every answer.

use serde_json::{Value, json};

use crate::common::{TestHost, artifacts, cmd};

/// A build of the `bank_account` plugin, loaded under that name.
#[derive(Clone, Copy, Debug)]
pub enum Build {
    Rust,
    JavaScript,
    Python,
}

impl Build {
    pub const ALL: [Build; 3] = [Build::Rust, Build::JavaScript, Build::Python];

    pub fn component(self) -> &'static str {
        match self {
            Build::Rust => artifacts::BANK_ACCOUNT,
            Build::JavaScript => artifacts::bank_account_js(),
            Build::Python => artifacts::bank_account_py(),
        }
    }

    /// A host running this build as `bank_account`.
    pub async fn host(self) -> TestHost {
        match self {
            Build::Rust => TestHost::start().await,
            _ => TestHost::start_polyglot(&[(self.component(), "bank_account")]).await,
        }
    }
}

/// `mod scenario { rust, javascript, python }`: the scenario once per build.
macro_rules! for_every_build {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::Build;

            #[tokio::test]
            async fn rust() {
                super::$scenario(Build::Rust).await;
            }

            #[tokio::test]
            async fn javascript() {
                super::$scenario(Build::JavaScript).await;
            }

            #[tokio::test]
            async fn python() {
                super::$scenario(Build::Python).await;
            }
        }
    )*};
}

for_every_build!(
    open_deposit_withdraw_close,
    business_rules_are_rejected_with_422,
    bad_input_is_invalid_command_400,
    time_travel_by_version_and_time,
);

async fn open_deposit_withdraw_close(build: Build) {
    let mut h = build.host().await;
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

async fn business_rules_are_rejected_with_422(build: Build) {
    let mut h = build.host().await;
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

async fn bad_input_is_invalid_command_400(build: Build) {
    let mut h = build.host().await;
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
        cmd("Deposit", json!({"amount": 5, "note": "rent"})),
        cmd("Close", json!({"reason": "moving"})),
    ] {
        let r = h.command("bank_account", "3", body.clone()).await;
        r.expect(400, "invalid_command");
    }
    // A misspelled field is refused by name, not taken for a missing one.
    let r = h
        .command("bank_account", "3", cmd("Deposit", json!({"amuont": 5})))
        .await;
    r.expect(400, "invalid_command");
    assert_eq!(
        r.message(),
        "command `Deposit`: unknown field `amuont`",
        "{}",
        r.body
    );
    let s = h.get("/streams/bank_account-3/state").await;
    assert_eq!(s.body["version"], 1, "invalid commands append nothing");
    h.stop().await;
}

async fn time_travel_by_version_and_time(build: Build) {
    let mut h = build.host().await;
    h.command("bank_account", "4", cmd("Open", json!({"owner": "di"})))
        .await
        .expect(200, "");
    let d = h
        .command("bank_account", "4", cmd("Deposit", json!({"amount": 10})))
        .await;
    let at = d.body["events"][0]["recorded_at"]
        .as_str()
        .expect("recorded_at")
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

/// The same commands, in the same order, to the three builds: every answer
/// (status, error code, message and details, events, state) is the same.
#[tokio::test]
async fn every_build_gives_the_same_answers() {
    let script: Vec<(&str, Value)> = vec![
        ("a", cmd("Deposit", json!({"amount": 5}))),
        (
            "a",
            cmd("Open", json!({"owner": "ann", "overdraft_limit": 50})),
        ),
        ("a", cmd("Open", json!({"owner": "ann"}))),
        ("a", cmd("Deposit", json!({"amount": 100}))),
        ("a", cmd("Withdraw", json!({"amount": 149}))),
        ("a", cmd("Withdraw", json!({"amount": 2}))),
        ("a", cmd("Close", json!({}))),
        ("a", cmd("Deposit", json!({"amount": 0}))),
        ("a", cmd("Deposit", json!({"amount": -1}))),
        ("a", cmd("Deposit", json!({"amount": "ten"}))),
        ("a", cmd("Deposit", json!({}))),
        ("a", cmd("Withdraw", json!({"amount": 1.5}))),
        // Unknown fields: refused by name, the first problem in document
        // order first (`Amount` sorts before `amount`, `zz` after).
        ("a", cmd("Deposit", json!({"amuont": 5}))),
        ("a", cmd("Deposit", json!({"amount": 5, "note": "rent"}))),
        ("a", cmd("Deposit", json!({"Amount": 5, "amount": "ten"}))),
        ("a", cmd("Deposit", json!({"amount": "ten", "zz": 1}))),
        ("a", cmd("Close", json!({"reason": "moving"}))),
        ("b", cmd("Open", json!({"owner": "bo", "overdraft": 5}))),
        ("a", cmd("Explode", json!({}))),
        ("b", cmd("Open", json!({}))),
        ("b", cmd("Open", json!({"owner": 7}))),
        (
            "b",
            cmd("Open", json!({"owner": "bo", "overdraft_limit": -1})),
        ),
        ("b", cmd("Open", json!({"owner": "bo"}))),
        ("b", cmd("Withdraw", json!({"amount": 1}))),
        ("a", cmd("Deposit", json!({"amount": 99}))),
        ("a", cmd("Close", json!({}))),
        ("a", cmd("Withdraw", json!({"amount": 1}))),
        ("a", cmd("Open", json!({"owner": "again"}))),
    ];
    let mut transcripts = Vec::new();
    for build in Build::ALL {
        let mut h = build.host().await;
        let mut transcript = Vec::new();
        for (id, body) in &script {
            let a = h.command("bank_account", id, body.clone()).await;
            transcript.push(comparable(a.status.as_u16(), &a.body));
        }
        for id in ["a", "b"] {
            let s = h.get(&format!("/streams/bank_account-{id}/state")).await;
            transcript.push(json!({"state": s.body["state"], "version": s.body["version"]}));
        }
        h.stop().await;
        transcripts.push((build, transcript));
    }
    let (_, rust) = &transcripts[0];
    assert!(
        rust.iter().any(|a| a["status"] == 422) && rust.iter().any(|a| a["status"] == 400),
        "the script covers rejections and invalid commands"
    );
    for expected in [
        "command `Deposit`: unknown field `amuont`",
        "command `Deposit`: unknown field `Amount`",
        "command `Open`: unknown field `overdraft`",
    ] {
        assert!(
            rust.iter().any(|a| a["error"]["message"] == expected),
            "the Rust build answers {expected:?}"
        );
    }
    for (build, other) in &transcripts[1..] {
        for (i, (r, o)) in rust.iter().zip(other).enumerate() {
            assert_eq!(r, o, "{build:?} differs from Rust at step {i}");
        }
        assert_eq!(rust.len(), other.len());
    }
}

/// An answer without what differs between runs (positions, times, ids).
fn comparable(status: u16, body: &Value) -> Value {
    let events: Vec<Value> = body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| json!({"type": e["type"], "data": e["data"], "version": e["version"]}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "status": status,
        "error": body["error"],
        "version": body["version"],
        "events": events,
    })
}
