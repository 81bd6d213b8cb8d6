//! What the API refuses rather than guess: unknown body fields, unknown
//! query parameters, duplicate keys; and the JSON error body of answers
//! that axum makes by itself.

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::super::app;
use super::{concrete, documented, host, send};
use crate::server::{self, Host, HostConfig};

/// An answer: status, headers and the body as JSON (`null` if it is not).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// Send `body` as it is, with `content_type` if given.
async fn raw(
    host: &Host,
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, "Bearer secret");
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let response = app(host.state.clone())
        .oneshot(request.body(body.into()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

async fn command(host: &Host, id: &str, body: &str) -> Answer {
    let uri = format!("/commands/bank_account/{id}");
    raw(
        host,
        Method::POST,
        &uri,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

/// The answer is `status` with the API's error body of `code`, whose
/// message contains `needle`.
fn assert_error(answer: &Answer, status: StatusCode, code: &str, needle: &str, what: &str) {
    let body = &answer.body;
    assert_eq!(answer.status, status, "{what}: {body}");
    let content_type = answer.headers.get(header::CONTENT_TYPE);
    assert_eq!(
        content_type.and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{what}: the error body is JSON"
    );
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{what}: {message:?} names {needle:?}"
    );
}

/// How many events stream `bank_account-{id}` has.
async fn events_of(host: &Host, id: &str) -> usize {
    let uri = format!("/streams/bank_account-{id}/events");
    let (status, body) = send(host, Method::GET, &uri, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"].as_array().map_or(0, Vec::len)
}

/// A bank account `id`, opened: one event.
async fn opened(host: &Host, id: &str) {
    let answer = command(host, id, r#"{"type":"Open","data":{"owner":"ann"}}"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn misspelled_body_fields_are_refused_and_append_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, _) = host(
        &dir,
        &[("bank_account", kiln_plugin_artifacts::BANK_ACCOUNT)],
    )
    .await;
    opened(&host, "z1").await;
    for (body, field) in [
        (
            r#"{"type":"Deposit","data":{"amount":5},"expected_verison":1}"#,
            "expected_verison",
        ),
        (r#"{"type":"Deposit","payload":{"amount":5}}"#, "payload"),
        (
            r#"{"type":"Deposit","data":{"amount":5},"meta":{}}"#,
            "meta",
        ),
    ] {
        let answer = command(&host, "z1", body).await;
        assert_error(
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("unknown field `{field}`"),
            body,
        );
    }
    assert_eq!(events_of(&host, "z1").await, 1, "nothing appended");
    // The fields it knows still work.
    let good = r#"{"type":"Deposit","data":{"amount":5},"metadata":{},"expected_version":1}"#;
    assert_eq!(command(&host, "z1", good).await.status, StatusCode::OK);
    assert_eq!(events_of(&host, "z1").await, 2);
    host.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn duplicate_keys_anywhere_in_a_body_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, _) = host(
        &dir,
        &[("bank_account", kiln_plugin_artifacts::BANK_ACCOUNT)],
    )
    .await;
    opened(&host, "d1").await;
    for (body, key) in [
        (
            r#"{"type":"Deposit","data":{"amount":1,"amount":2}}"#,
            "amount",
        ),
        (
            r#"{"type":"Deposit","data":{"amount":1},"metadata":{"by":{"id":1,"id":2}}}"#,
            "id",
        ),
        (
            r#"{"type":"Deposit","data":{"amount":1,"tags":[{"a":1,"\u0061":2}]}}"#,
            "a",
        ),
        (
            r#"{"type":"Deposit","type":"Withdraw","data":{"amount":1}}"#,
            "type",
        ),
    ] {
        let answer = command(&host, "d1", body).await;
        assert_error(
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("duplicate key \"{key}\""),
            body,
        );
    }
    assert_eq!(events_of(&host, "d1").await, 1, "nothing appended");
    host.shutdown().await.expect("shutdown");
}

/// A host with admin token `secret` and no plugins.
async fn admin_host(dir: &tempfile::TempDir) -> Host {
    let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
    let mut config = HostConfig::new(url, "127.0.0.1:0".parse().expect("addr"));
    config.admin_token = Some("secret".into());
    config.watch_interval = None;
    server::start(config).await.expect("host starts")
}

#[tokio::test]
async fn admin_bodies_refuse_unknown_fields_and_duplicate_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = admin_host(&dir).await;
    for (uri, body, needle) in [
        (
            "/projections/p/resume",
            r#"{"skp":true}"#,
            "unknown field `skp`",
        ),
        (
            "/projections/p/resume",
            r#"{"skip":false,"skip":true}"#,
            "duplicate key \"skip\"",
        ),
        (
            "/sagas/s/resume",
            r#"{"skip":true,"force":1}"#,
            "unknown field `force`",
        ),
        (
            "/plugins/p/rollback",
            r#"{"hsh":"sha256:00"}"#,
            "unknown field `hsh`",
        ),
    ] {
        let answer = raw(&host, Method::POST, uri, Some("application/json"), body).await;
        assert_error(
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            needle,
            &format!("{uri} {body}"),
        );
    }
    // A route that takes no body refuses one that says something.
    for (uri, body, needle) in [
        (
            "/dead-letters/7/retry",
            r#"{"reset_attempts":false}"#,
            "unknown field `reset_attempts`",
        ),
        (
            "/projections/p/rebuild",
            r#"{"from":0}"#,
            "unknown field `from`",
        ),
        ("/projections/p/promote", "[1]", "takes no body"),
    ] {
        let answer = raw(&host, Method::POST, uri, Some("application/json"), body).await;
        assert_error(
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            needle,
            &format!("{uri} {body}"),
        );
    }
    for body in ["", " {} "] {
        let answer = raw(&host, Method::POST, "/dead-letters/7/retry", None, body).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{body:?}: {}",
            answer.body
        );
    }
    // An empty body is still the default, and the known fields pass to the
    // next check (there is no such projection).
    for body in ["", r#"{"skip":true}"#] {
        let answer = raw(&host, Method::POST, "/projections/p/resume", None, body).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{body}: {}",
            answer.body
        );
    }
    host.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn unknown_query_parameters_are_refused_on_every_route() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, _) = host(
        &dir,
        &[("bank_account", kiln_plugin_artifacts::BANK_ACCOUNT)],
    )
    .await;
    opened(&host, "q1").await;
    for (uri, name) in [
        ("/projections/p/rows/k?min_postion=9999", "min_postion"),
        (
            "/projections/p/rows/k?min_position=1&generatoin=shadow",
            "generatoin",
        ),
        ("/projections/p/rows?prefix=a&limt=5", "limt"),
        (
            "/streams/bank_account-q1/events?frm_version=2",
            "frm_version",
        ),
        ("/streams/bank_account-q1/state?at_versoin=1", "at_versoin"),
        ("/events/live?from_postion=1", "from_postion"),
        ("/streams/bank_account-q1/live?frm_version=1", "frm_version"),
        ("/healthz?verbose", "verbose"),
        ("/projections?state=failed", "state"),
        ("/plugins?kind=aggregate", "kind"),
        ("/dead-letters?afterr=3", "afterr"),
    ] {
        let answer = raw(&host, Method::GET, uri, None, Body::empty()).await;
        assert_error(
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("\"{name}\""),
            uri,
        );
        assert_eq!(
            answer.body["error"]["details"]["unknown"],
            json!([name]),
            "{uri}"
        );
    }
    // A command with a query parameter appends nothing.
    let deposit = r#"{"type":"Deposit","data":{"amount":5}}"#;
    let answer = raw(
        &host,
        Method::POST,
        "/commands/bank_account/q1?expected_version=1",
        Some("application/json"),
        deposit,
    )
    .await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "expected_version",
        "command",
    );
    assert_eq!(events_of(&host, "q1").await, 1, "nothing appended");

    // Every documented operation refuses one, before anything else.
    for (method, path) in documented() {
        let uri = format!("{}?bogus_parameter=1", concrete(&path));
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let answer = raw(&host, method.clone(), &uri, None, Body::empty()).await;
        assert_error(
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "bogus_parameter",
            &format!("{method} {uri}"),
        );
    }

    // The parameters the API documents still work.
    for uri in [
        "/events?from_position=1&limit=10&types=Opened",
        "/streams/bank_account-q1/events?from_version=1&limit=5",
        "/streams/bank_account-q1/state?at_version=1",
        "/dead-letters?after=0&limit=5",
        "/healthz?",
    ] {
        let answer = raw(&host, Method::GET, uri, None, Body::empty()).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.body);
    }
    let answer = raw(
        &host,
        Method::GET,
        "/projections/p/rows/k?min_position=1&timeout_ms=10",
        None,
        Body::empty(),
    )
    .await;
    assert_error(
        &answer,
        StatusCode::NOT_FOUND,
        "not_found",
        "p",
        "documented row read",
    );
    host.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn the_routers_own_errors_have_the_json_error_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, _) = host(
        &dir,
        &[("bank_account", kiln_plugin_artifacts::BANK_ACCOUNT)],
    )
    .await;
    let deposit = r#"{"type":"Deposit","data":{"amount":5}}"#;
    let json = Some("application/json");

    let answer = raw(
        &host,
        Method::POST,
        "/commands/bank_account/%FF%FE",
        json,
        deposit,
    )
    .await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "UTF-8",
        "%FF%FE",
    );

    let answer = raw(&host, Method::DELETE, "/commands/bank_account/b1", None, "").await;
    assert_error(
        &answer,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "DELETE",
        "405",
    );
    let allow = answer
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok());
    assert_eq!(allow, Some("POST"), "405 keeps Allow");
    assert_eq!(answer.body["error"]["details"]["allowed"], json!(["POST"]));

    let answer = raw(&host, Method::PATCH, "/plugins/x", None, "").await;
    assert_error(
        &answer,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "PUT",
        "405",
    );

    let answer = raw(&host, Method::GET, "/no/such/route", None, "").await;
    assert_error(
        &answer,
        StatusCode::NOT_FOUND,
        "not_found",
        "/no/such/route",
        "404",
    );

    let answer = raw(
        &host,
        Method::POST,
        "/commands/bank_account/b1",
        Some("text/plain"),
        deposit,
    )
    .await;
    assert_error(
        &answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "JSON",
        "415",
    );

    let big = format!(r#"{{"type":"Deposit","data":"{}"}}"#, "x".repeat(2 << 20));
    let answer = raw(&host, Method::POST, "/commands/bank_account/b1", json, big).await;
    assert_error(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "limit",
        "413",
    );

    let answer = raw(
        &host,
        Method::POST,
        "/commands/bank_account/b1",
        json,
        r#"{"type":"#,
    )
    .await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "EOF",
        "syntax",
    );

    let answer = raw(&host, Method::POST, "/dead-letters/-3/retry", None, "").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    assert!(answer.body["error"]["code"].is_string());
    host.shutdown().await.expect("shutdown");
}
