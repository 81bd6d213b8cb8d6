//! Unknown query parameters are refused, on every route: a misspelled
//! `?min_postion=9` must not silently turn into a read that does not wait.
//!
//! The parameters a route takes are the ones its OpenAPI operation lists,
//! which utoipa derives from the route's query struct (each of which also
//! says `#[serde(deny_unknown_fields)]`). One layer over every route checks
//! the request's parameter names against that list before the handler runs,
//! so a route that takes no query at all refuses one too, with no code of
//! its own.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::{MatchedPath, Query, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiError;

/// The query parameters of each operation: path template, then method.
type Accepted = HashMap<String, HashMap<String, Vec<String>>>;

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
            let mut names = shared.clone();
            names.extend(query_names(&operation["parameters"]));
            Some((m.to_ascii_uppercase(), names))
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

/// The layer: `400 invalid_request` naming every parameter of the request
/// that its route does not take.
pub async fn refuse_unknown(request: Request, next: Next) -> Response {
    if let Some(refusal) = check(&request) {
        return refusal.into_response();
    }
    next.run(request).await
}

fn check(request: &Request) -> Option<ApiError> {
    request.uri().query()?;
    let path = request.extensions().get::<MatchedPath>()?.as_str();
    // HEAD is served by the GET route.
    let method = match request.method() {
        &Method::HEAD => "GET",
        m => m.as_str(),
    };
    let names = accepted().get(path)?.get(method)?;
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
    fn the_document_names_each_operations_query_parameters() {
        let accepted = accepted();
        let row = &accepted["/projections/{name}/rows/{key}"]["GET"];
        assert_eq!(row, &["min_position", "timeout_ms"]);
        let events = &accepted["/streams/{stream_id}/events"]["GET"];
        assert_eq!(events, &["from_version", "limit"]);
        assert!(accepted["/healthz"]["GET"].is_empty());
        assert!(accepted["/commands/{aggregate}/{id}"]["POST"].is_empty());
        // Path and header parameters are not query parameters.
        let live = &accepted["/events/live"]["GET"];
        assert_eq!(live, &["from_position"]);
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
