//! Slow clients cannot take the server off the air: connections that trickle
//! a head or a declared body are cut by the read timeouts, and while they
//! hold every connection slot a new client's health check is still served.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use kiln::server::OpenConnections;

use crate::common::{TestHost, artifacts};

/// The header and body read timeouts of the test host.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_CONNECTIONS: usize = 6;
const HEALTH_CONNECTIONS: usize = 2;
/// One byte this often: well under the read timeouts, so only a deadline
/// for the whole head or body cuts the connection.
const TRICKLE: Duration = Duration::from_millis(200);

/// One request on a connection of its own: (status, raw answer).
async fn fresh_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if !matches!(read, Ok(Ok(_))) {
        return (0, answer);
    }
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// A connection that sends `start` then one byte of `then` per [`TRICKLE`];
/// the task ends with what the server answered once it closes the
/// connection, and how long that took.
fn slow_client(addr: SocketAddr, start: String, then: u8) -> JoinHandle<(String, Duration)> {
    tokio::spawn(async move {
        let began = Instant::now();
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut reader, mut writer) = stream.into_split();
        let trickle = tokio::spawn(async move {
            if writer.write_all(start.as_bytes()).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(TRICKLE).await;
                if writer.write_all(&[then]).await.is_err() {
                    return;
                }
            }
        });
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut answer)).await;
        trickle.abort();
        (
            String::from_utf8_lossy(&answer).into_owned(),
            began.elapsed(),
        )
    })
}

fn slow_head(addr: SocketAddr) -> JoinHandle<(String, Duration)> {
    slow_client(
        addr,
        "POST /commands/bank_account/slow HTTP/1.1\r\nHost: kiln\r\nX-Slow: ".into(),
        b'a',
    )
}

fn slow_body(addr: SocketAddr) -> JoinHandle<(String, Duration)> {
    slow_client(
        addr,
        "POST /commands/bank_account/slow HTTP/1.1\r\nHost: kiln\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"type\": \""
            .into(),
        b'a',
    )
}

/// Poll `request` until it gives `want`, for at most `within`.
async fn until_status(
    within: Duration,
    want: u16,
    request: impl AsyncFn() -> (u16, String),
) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let got = request().await;
        if got.0 == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (at most 10 s) until the host has exactly these connections open.
async fn until_open(host: &TestHost, full: usize, health_only: usize) {
    let want = OpenConnections { full, health_only };
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.host().open_connections() != want {
        assert!(
            Instant::now() < deadline,
            "open connections: {:?}, expected {want:?}",
            host.host().open_connections()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_and_health_checks_get_through_meanwhile() {
    let host = TestHost::start_with_plugins(&[(artifacts::BANK_ACCOUNT, "bank_account")], |c| {
        c.http.header_read_timeout = READ_TIMEOUT;
        c.http.body_read_timeout = READ_TIMEOUT;
        c.http.max_connections = MAX_CONNECTIONS;
        c.http.health_connections = HEALTH_CONNECTIONS;
    })
    .await;
    let addr: SocketAddr = host
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let open = r#"{"type":"Open","data":{"owner":"o"}}"#;
    let deposit = r#"{"type":"Deposit","data":{"amount":5}}"#;
    let (status, answer) = fresh_request(addr, "POST", "/commands/bank_account/a1", open).await;
    assert_eq!(status, 200, "{answer}");
    until_open(&host, 0, 0).await;

    // Slow clients, trickling heads and bodies, take every connection slot.
    let mut slow: Vec<_> = (0..MAX_CONNECTIONS)
        .map(|i| {
            if i % 2 == 0 {
                slow_head(addr)
            } else {
                slow_body(addr)
            }
        })
        .collect();
    until_open(&host, MAX_CONNECTIONS, 0).await;
    // A new connection is served health checks only.
    let (status, answer) = fresh_request(addr, "GET", "/plugins", "").await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("\"unavailable\""), "{answer}");
    for path in ["/healthz", "/readyz"] {
        let (status, answer) = fresh_request(addr, "GET", path, "").await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    assert!(
        slow.iter().all(|c| !c.is_finished()),
        "the slow clients still hold their connections"
    );
    until_open(&host, MAX_CONNECTIONS, 0).await;

    // More slow clients than the room kept for health checks: they take it,
    // the rest are closed at once; a slow client in a health-check slot is
    // cut within a second, and a health check gets through again.
    slow.extend((0..HEALTH_CONNECTIONS + 2).map(|_| slow_head(addr)));
    until_open(&host, MAX_CONNECTIONS, HEALTH_CONNECTIONS).await;
    let (status, answer) = until_status(READ_TIMEOUT * 2, 200, async || {
        fresh_request(addr, "GET", "/healthz", "").await
    })
    .await;
    assert_eq!(status, 200, "{answer}");

    // Every slow client is cut: a trickled head without an answer, a
    // trickled body with a 408, each after the read timeout.
    for (i, client) in slow.into_iter().enumerate() {
        let (answer, took) = client.await.expect("slow client");
        if i < MAX_CONNECTIONS && i % 2 == 1 {
            assert!(answer.starts_with("HTTP/1.1 408"), "client {i}: {answer}");
            assert!(answer.contains("request_timeout"), "client {i}: {answer}");
        } else {
            assert_eq!(answer, "", "client {i}");
        }
        if i < MAX_CONNECTIONS {
            assert!(took >= READ_TIMEOUT, "client {i} cut after {took:?}");
        }
    }
    until_open(&host, 0, 0).await;

    // And commands are served again.
    let (status, answer) = fresh_request(addr, "POST", "/commands/bank_account/a1", deposit).await;
    assert_eq!(status, 200, "{answer}");
}

/// A kept-alive connection that sends nothing more is closed after the
/// idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let host = TestHost::start_with_plugins(&[], |c| {
        c.http.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let addr: SocketAddr = host
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
        .await
        .expect("write");
    let began = Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the idle connection")
        .expect("read");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(began.elapsed() >= Duration::from_millis(300));
}
