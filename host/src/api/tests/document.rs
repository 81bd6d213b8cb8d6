//! What the OpenAPI document says against what the server does, without
//! schemathesis (which `host/tests/openapi.rs` runs on a live binary): the
//! shapes the issue found wrong, and answers the server gives that the
//! document must list.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::super::{app, openapi};
use super::host_with;
use crate::server::Host;

const TOKEN: &str = "document-test-token";

fn document() -> Value {
    serde_json::to_value(openapi::document()).expect("document serializes")
}

/// Every operation: (method, path, operation).
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            all.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    all
}

/// A schema with its `$ref` followed (one level).
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            &document["components"]["schemas"][name]
        }
        None => schema,
    }
}

#[test]
fn every_error_answer_is_documented_with_the_error_body() {
    let document = document();
    for (method, path, operation) in operations(&document) {
        let responses = operation["responses"].as_object().expect("responses");
        // Every route refuses a query parameter it does not take or cannot parse.
        assert!(responses.contains_key("400"), "{method} {path} has no 400");
        let admin = operation["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty());
        assert_eq!(
            responses.contains_key("401"),
            admin,
            "{method} {path}: 401 exactly on admin routes"
        );
        for (status, response) in responses {
            if status.as_str() < "400" {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"];
            assert_eq!(
                schema["$ref"], "#/components/schemas/ErrorBody",
                "{method} {path} {status}: {response}"
            );
        }
    }
    let schemas = &document["components"]["schemas"];
    assert!(schemas["ErrorBody"].is_object() && schemas["ErrorDetail"].is_object());
}

#[test]
fn integer_parameters_are_bounded() {
    let document = document();
    let mut checked = 0;
    for (method, path, operation) in operations(&document) {
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let schema = resolve(&document, &parameter["schema"]);
            assert!(
                schema["$ref"].is_null() && !schema.is_null(),
                "{method} {path} {}: an unresolvable schema {}",
                parameter["name"],
                parameter["schema"]
            );
            let types = &schema["type"];
            if types == "integer"
                || types
                    .as_array()
                    .is_some_and(|t| t.contains(&json!("integer")))
            {
                checked += 1;
                let name = &parameter["name"];
                assert!(
                    schema["minimum"].is_number(),
                    "{method} {path} {name}: no minimum"
                );
                assert!(
                    schema["maximum"].is_number(),
                    "{method} {path} {name}: no maximum"
                );
                assert!(
                    !types.as_array().is_some_and(|t| t.contains(&json!("null"))),
                    "{method} {path} {name}: null is not a value a query or header can have"
                );
            }
        }
    }
    assert!(checked >= 15, "only {checked} integer parameters");
    let positions = &document["paths"]["/events"]["get"]["parameters"][0]["schema"];
    assert_eq!(positions["maximum"], json!(i64::MAX), "{positions}");
}

#[test]
fn request_bodies_allow_only_what_the_server_accepts() {
    let document = document();
    let schemas = &document["components"]["schemas"];
    let command = &schemas["CommandBody"];
    assert_eq!(command["required"], json!(["type"]), "{command}");
    let expected = &command["properties"]["expected_version"]["oneOf"];
    assert_eq!(expected[0]["type"], "integer", "{expected}");
    assert_eq!(expected[0]["minimum"], 0, "{expected}");
    assert_eq!(
        expected[1]["enum"],
        json!(["any", "no_stream"]),
        "{expected}"
    );
    assert_eq!(expected[2]["type"], "null", "{expected}");

    for (path, schema) in [
        ("/projections/{name}/resume", "ResumeBody"),
        ("/sagas/{name}/resume", "ResumeBody"),
        ("/plugins/{name}/rollback", "RollbackBody"),
    ] {
        let body = &document["paths"][path]["post"]["requestBody"];
        assert_ne!(body["required"], true, "{path}: the body is optional");
        assert_eq!(
            body["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{schema}"),
            "{path}: an object when given, never null: {body}"
        );
    }
    assert_eq!(
        schemas["ResumeBody"]["properties"]["skip"]["type"],
        "boolean"
    );
    assert_eq!(
        schemas["RollbackBody"]["properties"]["hash"]["pattern"],
        "^sha256:[0-9a-f]{64}$"
    );
    let wasm = &document["paths"]["/plugins/{name}"]["put"]["requestBody"]["content"]["application/wasm"]
        ["schema"];
    assert_eq!(wasm, &json!({"type": "string", "format": "binary"}));
}

#[test]
fn metrics_and_live_feeds_are_documented_as_what_they_send() {
    let document = document();
    let metrics = &document["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    assert_eq!(
        metrics
            .as_object()
            .map(|c| c.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["text/plain".to_string()]),
        "{metrics}"
    );
    for path in ["/events/live", "/streams/{stream_id}/live"] {
        let event = &document["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]
            ["schema"];
        assert_eq!(
            event["required"],
            json!(["event", "id", "data"]),
            "{path}: {event}"
        );
        assert_eq!(
            event["properties"]["data"]["contentSchema"]["$ref"],
            "#/components/schemas/Event"
        );
    }
}

/// An answer: status, content type, JSON body (or null).
async fn call(
    host: &Host,
    method: Method,
    uri: &str,
    admin: bool,
    body: Body,
) -> (StatusCode, String, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if admin {
        request = request.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    }
    let response = app(host.state.clone())
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        content_type,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Answers the server gives (those the issue found undocumented among
/// them): each is in the document for its operation, with its content
/// type, and an error has the error body.
#[tokio::test]
async fn the_answers_the_server_gives_are_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (host, _) = host_with(
        &dir,
        &[("account_balances", kiln_plugin_artifacts::ACCOUNT_BALANCES)],
        Some(TOKEN),
    )
    .await;
    let big = || {
        Body::from(format!(
            "{{\"skip\": false, \"pad\": \"{}\"}}",
            "x".repeat(5000)
        ))
    };
    let cases: Vec<(Method, &str, &str, bool, Body, u16)> = vec![
        (
            Method::GET,
            "/events?limit=0",
            "/events",
            false,
            Body::empty(),
            400,
        ),
        (
            Method::GET,
            "/events?limit=-1",
            "/events",
            false,
            Body::empty(),
            400,
        ),
        (
            Method::GET,
            "/events?from_position=-1",
            "/events",
            false,
            Body::empty(),
            400,
        ),
        (
            Method::GET,
            "/events?from_position=9223372036854775808",
            "/events",
            false,
            Body::empty(),
            400,
        ),
        (
            Method::GET,
            "/events?from_position=9223372036854775807",
            "/events",
            false,
            Body::empty(),
            200,
        ),
        (
            Method::GET,
            "/streams/x/state?at_version=0",
            "/streams/{stream_id}/state",
            false,
            Body::empty(),
            400,
        ),
        (
            Method::GET,
            "/streams/x/events?from_version=9223372036854775808",
            "/streams/{stream_id}/events",
            false,
            Body::empty(),
            400,
        ),
        (
            Method::GET,
            "/dead-letters?after=9223372036854775808",
            "/dead-letters",
            false,
            Body::empty(),
            400,
        ),
        (
            Method::POST,
            "/dead-letters/-3027/retry",
            "/dead-letters/{id}/retry",
            true,
            Body::empty(),
            400,
        ),
        (
            Method::POST,
            "/dead-letters/3027/retry",
            "/dead-letters/{id}/retry",
            false,
            Body::empty(),
            401,
        ),
        (
            Method::POST,
            "/projections/nope/promote",
            "/projections/{name}/promote",
            true,
            Body::empty(),
            404,
        ),
        (
            Method::DELETE,
            "/projections/nope/shadow",
            "/projections/{name}/shadow",
            true,
            Body::empty(),
            404,
        ),
        (
            Method::POST,
            "/projections/account_balances/promote",
            "/projections/{name}/promote",
            false,
            Body::empty(),
            401,
        ),
        (
            Method::POST,
            "/projections/account_balances/resume",
            "/projections/{name}/resume",
            true,
            big(),
            413,
        ),
        (
            Method::POST,
            "/sagas/nope/resume",
            "/sagas/{name}/resume",
            true,
            big(),
            413,
        ),
        (
            Method::POST,
            "/projections/account_balances/resume",
            "/projections/{name}/resume",
            true,
            Body::from("null"),
            400,
        ),
        (
            Method::GET,
            "/projections/account_balances/rows?timeout_ms=60001",
            "/projections/{name}/rows",
            false,
            Body::empty(),
            400,
        ),
        (
            Method::GET,
            "/projections/account_balances/rows/k?timeout_ms=60001",
            "/projections/{name}/rows/{key}",
            false,
            Body::empty(),
            400,
        ),
        (
            Method::GET,
            "/projections/account_balances/rows/k?min_position=5&timeout_ms=0",
            "/projections/{name}/rows/{key}",
            false,
            Body::empty(),
            503,
        ),
        (
            Method::GET,
            "/metrics",
            "/metrics",
            false,
            Body::empty(),
            200,
        ),
    ];
    let document = document();
    for (method, uri, path, admin, body, expected) in cases {
        let operation = &document["paths"][path][method.as_str().to_lowercase()];
        let (status, content_type, body) = call(&host, method.clone(), uri, admin, body).await;
        assert_eq!(status.as_u16(), expected, "{method} {uri}: {body}");
        let documented = &operation["responses"][status.as_str()];
        assert!(
            documented.is_object(),
            "{method} {uri}: {status} is not documented for {path}"
        );
        let media = content_type.split(';').next().unwrap_or("").trim();
        assert!(
            documented["content"][media].is_object(),
            "{method} {uri}: {status} answers {content_type}, documented {}",
            documented["content"]
        );
        if status.as_u16() >= 400 {
            assert!(body["error"]["code"].is_string(), "{method} {uri}: {body}");
            assert!(
                body["error"]["message"].is_string(),
                "{method} {uri}: {body}"
            );
        }
    }
    host.shutdown().await.expect("shutdown");
}
