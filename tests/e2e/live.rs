//! Live feeds: `GET /events/live` and `GET /streams/{id}/live` (Server-Sent Events).

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestHost, cmd};

/// Generous bound on waiting for one message; no test relies on timing.
const WAIT: Duration = Duration::from_secs(60);

/// One SSE message.
#[derive(Debug, Clone)]
struct Message {
    event: String,
    id: u64,
    data: Value,
}

/// An open SSE response, read incrementally.
struct Feed {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Feed {
    /// Open a feed; `last_id` goes in `Last-Event-ID`.
    async fn open(h: &TestHost, path: &str, last_id: Option<&str>) -> Feed {
        // No overall timeout: the body never ends by itself.
        let client = reqwest::Client::new();
        let mut req = client.get(h.url(path));
        if let Some(id) = last_id {
            req = req.header("Last-Event-ID", id);
        }
        let response = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("the feed answers in time")
            .expect("request");
        assert_eq!(response.status().as_u16(), 200, "opening {path}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "content type {content_type}"
        );
        Feed {
            response,
            buf: Vec::new(),
        }
    }

    /// The next message that carries an event (keep-alive comments are
    /// skipped); `None` when the body ends.
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                if let Some(message) = parse(&text) {
                    return Some(message);
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("a message in time");
            match chunk {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Message> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next().await.expect("the feed goes on"));
        }
        out
    }
}

/// One SSE block; `None` for a comment-only block (keep-alive).
fn parse(block: &str) -> Option<Message> {
    let (mut event, mut id, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_string()),
            "id" => id = Some(value.parse::<u64>().expect("numeric id")),
            "data" => data.push(value.to_string()),
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    if event.is_none() && id.is_none() && data.is_empty() {
        return None;
    }
    Some(Message {
        event: event.expect("event field"),
        id: id.expect("id field"),
        data: serde_json::from_str(&data.join("\n")).expect("data is JSON"),
    })
}

/// `GET /events` from a position: the events as the log shows them.
async fn log(h: &TestHost, from: u64) -> Vec<Value> {
    let a = h.get(&format!("/events?from_position={from}")).await;
    a.expect(200, "");
    a.body["events"].as_array().expect("events").clone()
}

async fn open_account(h: &TestHost, id: &str) {
    h.command("bank_account", id, cmd("Open", json!({"owner": "ann"})))
        .await
        .expect(200, "");
}

async fn deposit(h: &TestHost, id: &str, amount: u64) -> Value {
    let a = h
        .command(
            "bank_account",
            id,
            cmd("Deposit", json!({"amount": amount})),
        )
        .await;
    a.expect(200, "");
    a.body
}

/// Messages match the log exactly: ids are positions, data is the JSON.
#[track_caller]
fn assert_same(messages: &[Message], events: &[Value]) {
    assert_eq!(messages.len(), events.len());
    for (m, e) in messages.iter().zip(events) {
        assert_eq!(m.event, "event");
        assert_eq!(json!(m.id), e["position"]);
        assert_eq!(&m.data, e);
    }
}

#[tokio::test]
async fn global_feed_catches_up_then_follows_live() {
    let mut h = TestHost::start().await;
    open_account(&h, "l1").await;
    for amount in 1..=5 {
        deposit(&h, "l1", amount).await;
    }
    let mut feed = Feed::open(&h, "/events/live?from_position=1", None).await;
    let got = feed.take(6).await;
    assert_same(&got, &log(&h, 1).await);

    // Committed after connecting.
    deposit(&h, "l1", 10).await;
    open_account(&h, "l2").await;
    let got = feed.take(2).await;
    assert_same(&got, &log(&h, 7).await);
    assert_eq!(got[1].data["stream_id"], "bank_account-l2");
    h.stop().await;
}

#[tokio::test]
async fn global_feed_without_a_start_begins_at_the_head() {
    let mut h = TestHost::start().await;
    open_account(&h, "h1").await;
    deposit(&h, "h1", 1).await;
    let mut feed = Feed::open(&h, "/events/live", None).await;
    let answer = deposit(&h, "h1", 2).await;
    let got = feed.take(1).await;
    assert_eq!(got[0].id, 3);
    assert_eq!(got[0].data, answer["events"][0]);
    h.stop().await;
}

#[tokio::test]
async fn last_event_id_resumes_after_that_position() {
    let mut h = TestHost::start().await;
    open_account(&h, "r1").await;
    for amount in 1..=7 {
        deposit(&h, "r1", amount).await;
    }
    let mut first = Feed::open(&h, "/events/live?from_position=1", None).await;
    let seen = first.take(3).await;
    drop(first);
    // The header wins over the query parameter.
    let last = seen[2].id.to_string();
    let mut feed = Feed::open(&h, "/events/live?from_position=1", Some(&last)).await;
    let got = feed.take(5).await;
    assert_same(&got, &log(&h, 4).await);
    deposit(&h, "r1", 100).await;
    let got = feed.take(1).await;
    assert_eq!(got[0].id, 9);

    h.get("/events/live?from_position=abc")
        .await
        .expect(400, "invalid_request");
    h.get("/events/live?from_position=-1")
        .await
        .expect(400, "invalid_request");
    h.send(
        h.client
            .get(h.url("/events/live"))
            .header("Last-Event-ID", "x1"),
    )
    .await
    .expect(400, "invalid_request");
    h.send(
        h.client
            .get(h.url("/streams/bank_account-r1/live"))
            .header("Last-Event-ID", "99999999999999999999"),
    )
    .await
    .expect(400, "invalid_request");
    h.get("/streams/bank_account-r1/live?from_version=abc")
        .await
        .expect(400, "invalid_request");
    h.stop().await;
}

#[tokio::test]
async fn stream_feed_carries_one_stream_from_a_version() {
    let mut h = TestHost::start().await;
    open_account(&h, "s1").await; // 1: s1 v1
    open_account(&h, "s2").await; // 2: s2 v1
    deposit(&h, "s1", 1).await; // 3: s1 v2
    deposit(&h, "s2", 1).await; // 4: s2 v2
    deposit(&h, "s1", 2).await; // 5: s1 v3

    let mut feed = Feed::open(&h, "/streams/bank_account-s1/live?from_version=2", None).await;
    let got = feed.take(2).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 5]);
    assert_eq!(got[0].data["version"], 2);
    assert_eq!(got[1].data["version"], 3);
    let all = log(&h, 1).await;
    assert_eq!(got[0].data, all[2]);

    // Live: another stream's event is not carried, this stream's is.
    deposit(&h, "s2", 5).await; // 6
    deposit(&h, "s1", 5).await; // 7: s1 v4
    let got = feed.take(1).await;
    assert_eq!((got[0].id, got[0].data["version"].clone()), (7, json!(4)));

    // Resume after a position of this stream, and after one of another.
    let mut feed = Feed::open(&h, "/streams/bank_account-s1/live", Some("3")).await;
    let got = feed.take(2).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), [5, 7]);
    let mut feed = Feed::open(&h, "/streams/bank_account-s1/live", Some("4")).await;
    let got = feed.take(2).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), [5, 7]);

    // A stream that does not exist yet is waited for.
    let mut feed = Feed::open(&h, "/streams/bank_account-s3/live", None).await;
    deposit(&h, "s1", 1).await; // 8
    open_account(&h, "s3").await; // 9
    let got = feed.take(1).await;
    assert_eq!(got[0].id, 9);
    assert_eq!(got[0].data["stream_id"], "bank_account-s3");
    h.stop().await;
}

#[tokio::test]
async fn a_slow_subscriber_blocks_nobody_and_misses_nothing() {
    // A two-commit broadcast buffer: any subscriber that pauses lags.
    let mut h = TestHost::start_with(|c| c.sqlite.feed_buffer = 2).await;
    const ACCOUNTS: usize = 4;
    const DEPOSITS: usize = 150;
    // Big events (metadata is copied into each), so that the unread feed
    // fills the socket buffers and stops being polled.
    let pad = "x".repeat(16 * 1024);
    for a in 0..ACCOUNTS {
        open_account(&h, &format!("slow{a}")).await;
    }
    let total = ACCOUNTS + ACCOUNTS * DEPOSITS;

    // Never read until all the writes are done.
    let mut slow = Feed::open(&h, "/events/live?from_position=1", None).await;
    let mut slow_stream = Feed::open(&h, "/streams/bank_account-slow1/live", None).await;
    // Read all along, concurrently with the writers.
    let mut fast = Feed::open(&h, "/events/live?from_position=1", None).await;
    let fast_reader = tokio::spawn(async move { fast.take(total).await });

    let mut writers = Vec::new();
    for a in 0..ACCOUNTS {
        let client = h.client.clone();
        let url = h.url(&format!("/commands/bank_account/slow{a}"));
        let pad = pad.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..DEPOSITS {
                let body =
                    json!({"type": "Deposit", "data": {"amount": i + 1}, "metadata": {"pad": pad}});
                let r = client.post(&url).json(&body).send().await.expect("request");
                assert_eq!(
                    r.status().as_u16(),
                    200,
                    "{}",
                    r.text().await.unwrap_or_default()
                );
            }
        }));
    }
    for w in writers {
        tokio::time::timeout(Duration::from_secs(300), w)
            .await
            .expect("writers are not held up by the feeds")
            .expect("every command succeeds");
    }

    let check = |got: &[Message]| {
        let ids: Vec<u64> = got.iter().map(|m| m.id).collect();
        assert_eq!(ids, (1..=total as u64).collect::<Vec<_>>());
        for m in got {
            assert_eq!(json!(m.id), m.data["position"]);
        }
    };
    let got = tokio::time::timeout(Duration::from_secs(300), fast_reader)
        .await
        .expect("the reading subscriber is not held up")
        .expect("reader");
    check(&got);
    let got = slow.take(total).await;
    check(&got);
    let page = log(&h, 1).await;
    assert_eq!(got[0].data, page[0]);
    assert_eq!(got[total - 1].data["metadata"]["pad"], json!(pad));

    let got = slow_stream.take(DEPOSITS + 1).await;
    assert!(
        got.iter()
            .all(|m| m.data["stream_id"] == "bank_account-slow1")
    );
    let versions: Vec<u64> = got
        .iter()
        .map(|m| m.data["version"].as_u64().expect("version"))
        .collect();
    assert_eq!(versions, (1..=(DEPOSITS + 1) as u64).collect::<Vec<_>>());
    h.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_feeds() {
    let mut h = TestHost::start().await;
    open_account(&h, "d1").await;
    let mut all = Feed::open(&h, "/events/live?from_position=1", None).await;
    let mut one = Feed::open(&h, "/streams/bank_account-d1/live", None).await;
    assert_eq!(all.take(1).await[0].id, 1);
    assert_eq!(one.take(1).await[0].id, 1);
    // An idle feed, waiting for events that will never come.
    let idle = Feed::open(&h, "/streams/bank_account-none/live", None).await;
    tokio::time::timeout(WAIT, h.stop())
        .await
        .expect("shutdown does not wait for live feeds");
    assert!(all.next().await.is_none());
    assert!(one.next().await.is_none());
    drop(idle);
}

#[tokio::test]
async fn shutdown_closes_a_feed_whose_client_stopped_reading() {
    let mut h = TestHost::start_with(|c| c.shutdown_grace = Duration::from_millis(300)).await;
    // Enough big events that the feed fills the socket buffers: the server
    // then stops polling its body, and only the grace period ends it.
    let pad = "x".repeat(16 * 1024);
    let mut writers = Vec::new();
    for a in 0..4 {
        open_account(&h, &format!("stuck{a}")).await;
        let client = h.client.clone();
        let url = h.url(&format!("/commands/bank_account/stuck{a}"));
        let pad = pad.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..100 {
                let body =
                    json!({"type": "Deposit", "data": {"amount": i + 1}, "metadata": {"pad": pad}});
                let r = client.post(&url).json(&body).send().await.expect("request");
                assert_eq!(r.status().as_u16(), 200);
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let mut stuck = Feed::open(&h, "/events/live?from_position=1", None).await;
    assert_eq!(stuck.take(1).await[0].id, 1);
    // The client reads no more; shutdown must still finish, soon after the grace.
    tokio::time::timeout(Duration::from_secs(20), h.stop())
        .await
        .expect("shutdown is bounded by the grace period");
    drop(stuck);
}
