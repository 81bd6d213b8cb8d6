//! Not a conformance test: appends per second through the store API, with
//! 64 concurrent appenders spread over 1, 2 and 3 store instances (hosts),
//! each append one event on its own stream with an expected version. Run by
//! hand:
//!
//! ```sh
//! source .ci/postgres.sh
//! cargo test -p kiln --lib store::conformance::throughput -- --ignored --nocapture
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::{TestDb, append, event};
use crate::store::{EventStore, ExpectedVersion};

const APPENDERS: usize = 64;
const RUN: Duration = Duration::from_secs(5);

/// Appends per second over `RUN`.
async fn measure(hosts: &[Arc<dyn EventStore>]) -> f64 {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for a in 0..APPENDERS {
        let store = hosts[a % hosts.len()].clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("bench-{a}-{}", uuid::Uuid::new_v4().simple());
            let mut version = 0;
            while start.elapsed() < RUN {
                store
                    .append(append(
                        &stream,
                        ExpectedVersion::Exact(version),
                        vec![event("Deposited", r#"{"amount":1}"#)],
                    ))
                    .await
                    .unwrap();
                version += 1;
            }
            version
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark, run by hand"]
async fn appends_per_second() {
    let sqlite = TestDb::sqlite();
    let store = sqlite.open().await;
    eprintln!(
        "sqlite, 1 host: {:.0} appends/s",
        measure(std::slice::from_ref(&store)).await
    );
    store.close().await;
    let Some(db) = TestDb::postgres("throughput").await else {
        return;
    };
    for n in 1..=3 {
        let hosts = db.open_hosts(n).await;
        let rate = measure(&hosts).await;
        eprintln!("postgres, {n} host(s): {rate:.0} appends/s");
        for store in hosts {
            store.close().await;
        }
    }
}
