//! What a request sends that its operation does not take is refused, on
//! every route, rather than ignored: a misspelled `?min_postion=9` must not
//! silently turn into a read that does not wait, nor `{"skip": true}` sent
//! to a route without a body into a retry that did not skip.
//!
//! What an operation takes is what its OpenAPI operation lists: the query
//! parameters utoipa derives from the route's query struct (each of which
//! also says `#[serde(deny_unknown_fields)]`), and whether it has a request
//! body. One layer over every route checks the request against that before
//! the handler runs, so a route that takes no query, or no body, refuses
//! one with no code of its own. Bodies of routes that take one are checked
//! by their handlers, through [`super::json::parse_json`].

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{MatchedPath, Query, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::json::{parse_json, read_body};

/// What one operation takes.
#[derive(Debug, Default, PartialEq)]
struct Takes {
    /// The names of its query parameters.
    query: Vec<String>,
    /// Whether it has a request body.
    body: bool,
}

/// What each operation takes: path template, then method.
type Accepted = HashMap<String, HashMap<String, Takes>>;

/// Largest body read from a route that takes none (to see that it says
/// nothing: empty, or `{}`).
const UNEXPECTED_BODY_BYTES_MAX: usize = 4096;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// What the served document says each operation takes.
fn accepted() -> &'static Accepted {
    static ACCEPTED: OnceLock<Accepted> = OnceLock::new();
    ACCEPTED.get_or_init(|| {
        let document = serde_json::to_value(super::openapi::document()).unwrap_or_default();
        from_document(&document)
    })
}

/// The query parameters of each operation of an OpenAPI document.
fn from_document(document: &Value) -> Accepted {
    let mut accepted = Accepted::new();
    let Some(paths) = document["paths"].as_object() else {
        return accepted;
    };
    for (path, item) in paths {
        let shared = query_names(&item["parameters"]);
        let operations = METHODS.iter().filter_map(|m| {
            let operation = item.get(*m)?;
            let mut query = shared.clone();
            query.extend(query_names(&operation["parameters"]));
            let body = !operation["requestBody"].is_null();
            Some((m.to_ascii_uppercase(), Takes { query, body }))
        });
        accepted.insert(path.clone(), operations.collect());
    }
    accepted
}

fn query_names(parameters: &Value) -> Vec<String> {
    parameters
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect()
}

/// The layer: `400 invalid_request` naming every query parameter the
/// request's operation does not take, or the fields of a body it does not
/// take.
pub async fn refuse_undocumented(request: Request, next: Next) -> Response {
    let Some((method, path, takes)) = operation(&request) else {
        return next.run(request).await;
    };
    if let Some(refusal) = unknown_query(&request, method, path, &takes.query) {
        return refusal.into_response();
    }
    if takes.body {
        return next.run(request).await;
    }
    match no_body(request, method, path).await {
        Ok(request) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// The request's operation as the document has it.
fn operation(request: &Request) -> Option<(&'static str, &'static str, &'static Takes)> {
    let matched = request.extensions().get::<MatchedPath>()?.as_str();
    // HEAD is served by the GET route.
    let method = match request.method() {
        &Method::HEAD => &Method::GET,
        m => m,
    };
    let (path, operations) = accepted().get_key_value(matched)?;
    let (method, takes) = operations.get_key_value(method.as_str())?;
    Some((method, path, takes))
}

fn unknown_query(
    request: &Request,
    method: &str,
    path: &str,
    names: &[String],
) -> Option<ApiError> {
    request.uri().query()?;
    // Decoded names, as the handler's own query struct would see them.
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(request.uri()).ok()?;
    let mut unknown: Vec<String> = Vec::new();
    for (name, _) in pairs {
        if !names.contains(&name) && !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    (!unknown.is_empty()).then(|| refusal(method, path, &unknown, names))
}

/// A body with no fields: what a route that takes no body accepts besides
/// none at all.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// The request of a route that takes no body, if it has none (or `{}`).
async fn no_body(request: Request, method: &str, path: &str) -> Result<Request, ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = read_body(body, UNEXPECTED_BODY_BYTES_MAX).await?;
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        parse_json::<NoFields>(&bytes).map_err(|e| {
            ApiError::invalid_request(format!("{method} {path} takes no body: {e}"))
        })?;
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn refusal(method: &str, path: &str, unknown: &[String], accepted: &[String]) -> ApiError {
    let quoted = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let noun = if unknown.len() == 1 {
        "parameter"
    } else {
        "parameters"
    };
    let takes = if accepted.is_empty() {
        "no query parameters".to_string()
    } else {
        quoted(accepted)
    };
    ApiError::invalid_request(format!(
        "unknown query {noun} {}: {method} {path} takes {takes}",
        quoted(unknown)
    ))
    .with_details(json!({ "unknown": unknown, "accepted": accepted }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_says_what_each_operation_takes() {
        let accepted = accepted();
        let takes = |path: &str, method: &str| &accepted[path][method];
        let row = takes("/projections/{name}/rows/{key}", "GET");
        assert_eq!(row.query, ["min_position", "timeout_ms", "generation"]);
        assert!(!row.body);
        let events = takes("/streams/{stream_id}/events", "GET");
        assert_eq!(events.query, ["from_version", "limit"]);
        assert!(takes("/healthz", "GET").query.is_empty());
        let command = takes("/commands/{aggregate}/{id}", "POST");
        assert_eq!((command.query.is_empty(), command.body), (true, true));
        assert!(takes("/plugins/{name}/rollback", "POST").body);
        assert!(!takes("/dead-letters/{id}/retry", "POST").body);
        // Path and header parameters are not query parameters.
        assert_eq!(takes("/events/live", "GET").query, ["from_position"]);
    }

    #[test]
    fn a_refusal_names_what_is_unknown_and_what_is_taken() {
        let e = refusal(
            "GET",
            "/x",
            &["min_postion".into()],
            &["min_position".into()],
        );
        assert_eq!(e.code, "invalid_request");
        assert_eq!(
            e.message,
            r#"unknown query parameter "min_postion": GET /x takes "min_position""#
        );
        let e = refusal("GET", "/healthz", &["a".into(), "b".into()], &[]);
        assert_eq!(
            e.message,
            r#"unknown query parameters "a", "b": GET /healthz takes no query parameters"#
        );
        let details = e.details.expect("details");
        assert_eq!(details["unknown"], json!(["a", "b"]));
    }
}
