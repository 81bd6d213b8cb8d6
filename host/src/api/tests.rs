//! The router against its OpenAPI document, and errors as the client and
//! the log see them, through a real host on a SQLite file.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use sqlx::Connection;
use tower::ServiceExt;

use super::{app, openapi};
use crate::server::{self, Host, HostConfig};

mod document;
mod strict;

/// A host on a fresh SQLite file, with the plugins given (copied from the
/// built examples), no admin token and no directory watch.
async fn host(dir: &tempfile::TempDir, plugins: &[(&str, &str)]) -> (Host, String) {
    host_with(dir, plugins, None).await
}

/// [`host`] with an admin token.
async fn host_with(
    dir: &tempfile::TempDir,
    plugins: &[(&str, &str)],
    admin_token: Option<&str>,
) -> (Host, String) {
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    for (name, path) in plugins {
        std::fs::copy(path, plugin_dir.join(format!("{name}.wasm"))).expect("copy plugin");
    }
    let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
    let mut config = HostConfig::new(url.clone(), "127.0.0.1:0".parse().expect("addr"));
    config.plugins_dir = Some(plugin_dir);
    config.watch_interval = None;
    config.admin_token = admin_token.map(String::from);
    let host = server::start(config).await.expect("host starts");
    for _ in 0..600 {
        if host.state.registry.len() >= plugins.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(host.state.registry.len(), plugins.len(), "plugins loaded");
    (host, url)
}

async fn send(host: &Host, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = app(host.state.clone())
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if event_stream {
        // A live feed never ends: its headers are the answer.
        return (status, Value::Null);
    }
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

/// `(METHOD, path)` of every operation in the served document.
fn documented() -> BTreeSet<(String, String)> {
    let document = serde_json::to_value(openapi::document()).expect("document serializes");
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let item = item.as_object().expect("path item");
            item.keys()
                .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
                .map(|method| (method.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A concrete URI for a templated path.
fn concrete(path: &str) -> String {
    path.replace("{id}", "1")
        .split('/')
        .map(|part| {
            if part.starts_with('{') {
                "x".to_string()
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The routes of API.md (first version) and those added beside it.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/commands/{aggregate}/{id}"),
    ("GET", "/streams/{stream_id}/events"),
    ("GET", "/streams/{stream_id}/state"),
    ("GET", "/events"),
    ("GET", "/events/live"),
    ("GET", "/streams/{stream_id}/live"),
    ("GET", "/plugins"),
    ("PUT", "/plugins/{name}"),
    ("DELETE", "/plugins/{name}"),
    ("GET", "/plugins/{name}/history"),
    ("POST", "/plugins/{name}/rollback"),
    ("GET", "/projections"),
    ("GET", "/projections/{name}"),
    ("GET", "/projections/{name}/rows"),
    ("GET", "/projections/{name}/rows/{key}"),
    ("POST", "/projections/{name}/rebuild"),
    ("POST", "/projections/{name}/resume"),
    ("GET", "/projections/{name}/skips"),
    ("GET", "/projections/{name}/diff"),
    ("POST", "/projections/{name}/promote"),
    ("DELETE", "/projections/{name}/shadow"),
    ("GET", "/sagas"),
    ("GET", "/sagas/{name}"),
    ("POST", "/sagas/{name}/resume"),
    ("GET", "/sagas/{name}/{instance}"),
    ("GET", "/dead-letters"),
    ("POST", "/dead-letters/{id}/retry"),
    ("GET", "/cluster"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let documented = documented();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected, "the document lists the API's routes");
    // The router is built from the document's own list: one `routes!`
    // per operation, and no route added any other way.
    let source = include_str!("../api.rs");
    assert_eq!(
        source.matches(".routes(routes!(").count(),
        documented.len(),
        "one routes! per documented operation"
    );
    for bypass in [".route(", ".nest(", ".merge(", ".route_service("] {
        assert!(
            !source.contains(bypass),
            "{bypass} adds an undocumented route"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let (host, _) = host(&dir, &[]).await;
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let uri = concrete(path);
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            let (status, body) = send(
                &host,
                Method::from_bytes(method.as_bytes()).expect("method"),
                &uri,
                None,
            )
            .await;
            let fallback = status == StatusCode::NOT_FOUND
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no route for"));
            if documented.contains(&(method.to_string(), path.clone())) {
                assert!(
                    !fallback && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is documented but not served: {status} {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is served but not documented"
                );
            }
        }
    }
    let (status, body) = send(&host, Method::GET, "/no/such/route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    host.shutdown().await.expect("shutdown");
}

/// A query parameter's schema in the document.
fn param_schema(path: &str, name: &str) -> Value {
    let document = serde_json::to_value(openapi::document()).expect("document serializes");
    let params = document["paths"][path]["get"]["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    params
        .into_iter()
        .find(|p| p["name"] == name)
        .map(|p| p["schema"].clone())
        .unwrap_or_else(|| panic!("{path} documents {name}"))
}

#[tokio::test]
async fn documented_bounds_are_the_ones_the_server_enforces() {
    use super::{projections, sagas, streams};
    let bounds = [
        ("/events", "limit", 1, u64::from(streams::PAGE_EVENTS_MAX)),
        (
            "/streams/{stream_id}/events",
            "limit",
            1,
            u64::from(streams::PAGE_EVENTS_MAX),
        ),
        (
            "/projections/{name}/rows",
            "limit",
            1,
            u64::from(projections::ROWS_PAGE_MAX),
        ),
        (
            "/dead-letters",
            "limit",
            1,
            u64::from(sagas::DEAD_LETTERS_PAGE_MAX),
        ),
    ];
    for (path, name, min, max) in bounds {
        let schema = param_schema(path, name);
        assert_eq!(
            schema["minimum"].as_f64(),
            Some(min as f64),
            "{path} {name}"
        );
        assert_eq!(
            schema["maximum"].as_f64(),
            Some(max as f64),
            "{path} {name}"
        );
    }
    let at_version = param_schema("/streams/{stream_id}/state", "at_version");
    assert_eq!(at_version["minimum"].as_f64(), Some(1.0));
    let timeout = param_schema("/projections/{name}/rows/{key}", "timeout_ms");
    assert_eq!(
        timeout["maximum"].as_f64(),
        Some(projections::MIN_POSITION_TIMEOUT_MS_MAX as f64)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let (host, _) = host(&dir, &[]).await;
    for uri in [
        "/events?limit=0".to_string(),
        format!("/events?limit={}", streams::PAGE_EVENTS_MAX + 1),
        "/dead-letters?limit=0".to_string(),
        format!("/dead-letters?limit={}", sagas::DEAD_LETTERS_PAGE_MAX + 1),
        "/streams/x/state?at_version=0".to_string(),
    ] {
        let (status, body) = send(&host, Method::GET, &uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{uri}");
    }
    let (status, _) = send(
        &host,
        Method::GET,
        &format!("/events?limit={}", streams::PAGE_EVENTS_MAX),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    host.shutdown().await.expect("shutdown");
}

/// What a tracing subscriber writes, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[tokio::test]
async fn a_database_error_answers_500_with_an_error_id_in_the_log() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().expect("tempdir");
    let (host, url) = host(
        &dir,
        &[("bank_account", kiln_plugin_artifacts::BANK_ACCOUNT)],
    )
    .await;
    let open = json!({"type": "Open", "data": {"owner": "ann"}});
    let (status, body) = send(&host, Method::POST, "/commands/bank_account/1", Some(open)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A violated constraint, injected beside the host: every append now
    // fails inside the database, which is reachable all along.
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("second connection");
    sqlx::query(
        "CREATE TRIGGER refuse_events BEFORE INSERT ON events \
         BEGIN SELECT RAISE(ABORT, 'injected'); END",
    )
    .execute(&mut conn)
    .await
    .expect("trigger");
    conn.close().await.expect("close");

    let deposit = json!({"type": "Deposit", "data": {"amount": 5}});
    let (status, body) = send(
        &host,
        Method::POST,
        "/commands/bank_account/1",
        Some(deposit),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "internal", "{body}");
    let error_id = body["error"]["details"]["error_id"]
        .as_str()
        .unwrap_or_else(|| panic!("an error id in details: {body}"));
    assert!(uuid::Uuid::parse_str(error_id).is_ok(), "{error_id}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(error_id), "{message}");
    assert!(
        !message.contains("injected"),
        "the cause stays out of the answer: {message}"
    );

    let logged = log.text();
    let line = logged
        .lines()
        .find(|l| l.contains(error_id))
        .unwrap_or_else(|| panic!("the error id is logged:\n{logged}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("injected"),
        "the cause chain is logged: {line}"
    );
    host.shutdown().await.expect("shutdown");
}

#[test]
fn store_errors_map_to_their_answers() {
    use super::ApiError;
    use crate::store::StoreError;
    let unavailable = ApiError::from(StoreError::from(sqlx::Error::PoolTimedOut));
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unavailable.code, "unavailable");
    let shutting_down = ApiError::from(StoreError::ShuttingDown);
    assert_eq!(shutting_down.code, "unavailable");
    let decode = StoreError::from(sqlx::Error::ColumnNotFound("position".into()));
    assert!(matches!(decode, StoreError::Internal { .. }), "{decode:?}");
    let internal = ApiError::from(decode);
    assert_eq!(internal.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(internal.code, "internal");
    let details = internal.details.expect("details");
    assert!(details["error_id"].is_string(), "{details}");
}
