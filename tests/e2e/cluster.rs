//! Several hosts on one PostgreSQL database: each projection and saga runs
//! on the one host holding its lease, reads work on every host, and when
//! the holder stops another host takes over from the stored checkpoint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use kiln_testkit::ScratchDatabase;

use crate::common::{TestHost, artifacts, cmd};

const LEASE: &str = "projection:account_balances";

/// The live lease `name` as `host` sees it in `GET /cluster`.
async fn lease(host: &TestHost, name: &str) -> Option<Value> {
    let a = host.get("/cluster").await;
    a.expect(200, "");
    a.body["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .find(|l| l["name"] == name && l["expired"] == false)
        .cloned()
}

async fn host_id(host: &TestHost) -> String {
    host.get("/cluster").await.body["host"]
        .as_str()
        .expect("host id")
        .to_string()
}

fn position(a: &Value) -> u64 {
    a["position"].as_u64().expect("position")
}

#[tokio::test]
async fn a_projection_runs_on_one_host_and_moves_when_it_stops() {
    let Some(db) = ScratchDatabase::for_test("a_projection_runs_on_one_host_and_moves").await
    else {
        return;
    };
    let plugins = [
        (artifacts::BANK_ACCOUNT, "bank_account"),
        (artifacts::ACCOUNT_BALANCES, "account_balances"),
    ];
    let ttl = Duration::from_millis(1_000);
    let (u1, u2) = (db.url().to_string(), db.url().to_string());
    let mut hosts = [
        TestHost::start_with_plugins(&plugins, |c| {
            c.db = u1;
            c.lease_ttl = ttl;
        })
        .await,
        TestHost::start_with_plugins(&plugins, |c| {
            c.db = u2;
            c.lease_ttl = ttl;
        })
        .await,
    ];

    // Exactly one host holds the projection's lease, and both agree which.
    let ids = [host_id(&hosts[0]).await, host_id(&hosts[1]).await];
    assert_ne!(ids[0], ids[1]);
    let seen_by_0 = lease(&hosts[0], LEASE).await.expect("a live lease");
    let seen_by_1 = lease(&hosts[1], LEASE).await.expect("a live lease");
    assert_eq!(seen_by_0["holder"], seen_by_1["holder"]);
    assert_ne!(seen_by_0["mine"], seen_by_1["mine"], "exactly one holds it");
    let holder = if seen_by_0["mine"] == true { 0 } else { 1 };
    let other = 1 - holder;
    assert_eq!(seen_by_0["holder"], ids[holder].as_str());

    // The other host reports the projection as running elsewhere, and its
    // reads wait for the stored checkpoint.
    let status = hosts[other].get("/projections/account_balances").await;
    status.expect(200, "");
    assert_eq!(status.body["runs_here"], false, "{}", status.body);
    assert_eq!(status.body["state"], "elsewhere");
    assert_eq!(status.body["host"], ids[holder].as_str());
    let status = hosts[holder].get("/projections/account_balances").await;
    assert_eq!(status.body["runs_here"], true, "{}", status.body);

    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut last = 0;
    for i in 0..4 {
        let id = format!("c{i}");
        let a = hosts[i % 2]
            .command("bank_account", &id, cmd("Open", json!({"owner": "o"})))
            .await;
        a.expect(200, "");
        expected.insert(id, 0);
        last = last.max(position(&a.body));
    }
    let read = hosts[other]
        .get(&format!(
            "/projections/account_balances/rows/account-c3?min_position={last}&timeout_ms=10000"
        ))
        .await;
    read.expect(200, "");
    assert_eq!(read.body["balance"], 0);

    // A stream of deposits through the surviving host while the holder stops.
    let survivor_client = hosts[other].client.clone();
    let survivor_base = hosts[other].base.clone();
    let writer = tokio::spawn(async move {
        let mut acked: BTreeMap<String, i64> = BTreeMap::new();
        let mut last = 0;
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < Duration::from_millis(3_000) {
            let id = format!("c{}", n % 4);
            let r = survivor_client
                .post(format!("{survivor_base}/commands/bank_account/{id}"))
                .json(&cmd("Deposit", json!({"amount": 1 + (n % 5) as i64})))
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 200, "{body}");
            *acked.entry(id).or_default() += 1 + (n % 5) as i64;
            last = last.max(body["position"].as_u64().expect("position"));
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (acked, last)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    hosts[holder].stop().await;

    // The survivor takes the lease over within a few ttl.
    let stopped_at = Instant::now();
    loop {
        if let Some(l) = lease(&hosts[other], LEASE).await
            && l["mine"] == true
        {
            break;
        }
        assert!(
            stopped_at.elapsed() < ttl * 4,
            "the surviving host did not take the lease over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = hosts[other].get("/projections/account_balances").await;
    assert_eq!(status.body["runs_here"], true, "{}", status.body);

    let (acked, last_deposit) = writer.await.expect("writer");
    for (id, amount) in acked {
        *expected.get_mut(&id).expect("opened") += amount;
    }
    let last = last.max(last_deposit);
    let rows = hosts[other]
        .get(&format!(
            "/projections/account_balances/rows?min_position={last}&timeout_ms=10000&limit=100"
        ))
        .await;
    rows.expect(200, "");
    let mut got: BTreeMap<String, i64> = BTreeMap::new();
    let mut totals = Value::Null;
    for row in rows.body["rows"].as_array().expect("rows") {
        let key = row["key"].as_str().expect("key");
        if key == "_totals" {
            totals = row["value"].clone();
        } else if let Some(id) = key.strip_prefix("account-") {
            got.insert(
                id.to_string(),
                row["value"]["balance"].as_i64().expect("balance"),
            );
        }
    }
    assert_eq!(got, expected, "the rows match the events exactly");
    assert_eq!(
        totals,
        json!({"open_accounts": 4, "total_balance": expected.values().sum::<i64>()})
    );
    let status = hosts[other].get("/projections/account_balances").await;
    assert_eq!(
        status.body["position"].as_u64(),
        Some(last),
        "{}",
        status.body
    );

    hosts[other].stop().await;
    db.remove().await.expect("drop the test database");
}

#[tokio::test]
async fn a_saga_runs_on_one_host_and_moves_when_it_stops() {
    let Some(db) = ScratchDatabase::for_test("a_saga_runs_on_one_host_and_moves").await else {
        return;
    };
    let plugins = [
        (artifacts::BANK_ACCOUNT, "bank_account"),
        (artifacts::TRANSFER, "transfer"),
        (artifacts::TRANSFER_SAGA, "transfer_saga"),
    ];
    let ttl = Duration::from_millis(1_000);
    let (u1, u2) = (db.url().to_string(), db.url().to_string());
    let mut hosts = [
        TestHost::start_with_plugins(&plugins, |c| {
            c.db = u1;
            c.lease_ttl = ttl;
        })
        .await,
        TestHost::start_with_plugins(&plugins, |c| {
            c.db = u2;
            c.lease_ttl = ttl;
        })
        .await,
    ];
    let seen = lease(&hosts[0], "saga:transfer_saga")
        .await
        .expect("a live lease");
    let holder = if seen["mine"] == true { 0 } else { 1 };
    let other = 1 - holder;
    let status = hosts[other].get("/sagas/transfer_saga").await;
    status.expect(200, "");
    assert_eq!(status.body["state"], "elsewhere", "{}", status.body);
    assert_eq!(status.body["runs_here"], false);
    assert_eq!(status.body["host"], seen["holder"]);

    for (id, amount) in [("a", 1_000), ("b", 0)] {
        hosts[other]
            .command("bank_account", id, cmd("Open", json!({"owner": id})))
            .await
            .expect(200, "");
        if amount > 0 {
            hosts[other]
                .command(
                    "bank_account",
                    id,
                    cmd("Deposit", json!({"amount": amount})),
                )
                .await
                .expect(200, "");
        }
    }
    let mut moved = 0;
    for i in 0..10 {
        if i == 5 {
            hosts[holder].stop().await;
        }
        let amount = i + 1;
        hosts[other]
            .command(
                "transfer",
                &format!("t{i}"),
                cmd("Request", json!({"from": "a", "to": "b", "amount": amount})),
            )
            .await
            .expect(200, "");
        moved += amount;
    }
    for i in 0..10 {
        hosts[other]
            .wait_saga("transfer_saga", &format!("t{i}"), "completed")
            .await;
    }
    assert_eq!(
        (
            hosts[other].balance("a").await,
            hosts[other].balance("b").await
        ),
        (1_000 - moved, moved),
        "every transfer applied exactly once"
    );
    let status = hosts[other].get("/sagas/transfer_saga").await;
    assert_eq!(status.body["runs_here"], true, "{}", status.body);
    assert_eq!(status.body["state"], "running");
    hosts[other].stop().await;
    db.remove().await.expect("drop the test database");
}
