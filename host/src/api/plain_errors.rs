//! Error answers that axum makes by itself get the API's JSON error body:
//! the router's `405` (which keeps its `Allow` header), an extractor's
//! rejection (a path segment that is not UTF-8 after decoding, …), and
//! any other error answer that is not JSON. Handlers answer with
//! [`ApiError`] and are left as they are.

use std::io;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiError;

/// Longest plain error body read to become the message.
const PLAIN_BODY_BYTES_MAX: usize = 16 * 1024;

/// The layer over the whole router.
pub async fn json_bodies(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let response = next.run(request).await;
    if !needs_json_body(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, PLAIN_BODY_BYTES_MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let error = api_error(parts.status, &method, &uri, &parts.headers, text);
    let (json_parts, json_body) = error.into_response().into_parts();
    // Keep what the original said in headers (`Allow`…), but not of its body.
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(content_type) = json_parts.headers.get(header::CONTENT_TYPE) {
        parts
            .headers
            .insert(header::CONTENT_TYPE, content_type.clone());
    }
    Response::from_parts(parts, Body::new(json_body))
}

/// An error answer whose body is not JSON.
fn needs_json_body(response: &Response) -> bool {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return false;
    }
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|mime| mime == "application/json" || mime.ends_with("+json"));
    !json
}

/// The error the plain answer stands for; `text` was its body.
fn api_error(
    status: StatusCode,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    text: String,
) -> ApiError {
    let path = uri.path();
    let or = |default: String| {
        if text.is_empty() {
            default
        } else {
            text.clone()
        }
    };
    match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed: Vec<&str> = headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            ApiError::new(
                status,
                "method_not_allowed",
                format!(
                    "{method} is not allowed on {path}; it takes {}",
                    allowed.join(", ")
                ),
            )
            .with_details(json!({ "allowed": allowed }))
        }
        StatusCode::NOT_FOUND => ApiError::not_found(or(format!("no route for {path}"))),
        StatusCode::UNAUTHORIZED => {
            ApiError::new(status, "unauthorized", or("unauthorized".into()))
        }
        StatusCode::REQUEST_TIMEOUT => ApiError::new(
            status,
            "request_timeout",
            or("the request took too long".into()),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "too_large",
            or("the request body is too large".into()),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported_media_type",
            or("the body's Content-Type is not one this route takes".into()),
        ),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::unavailable(or("retry later".into())),
        s if s.is_server_error() => {
            let mut e = ApiError::internal("the host failed", &io::Error::other(or(s.to_string())));
            e.status = s;
            e
        }
        s => ApiError::new(s, "invalid_request", or(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_answers_get_codes_by_status() {
        let uri: Uri = "/commands/a/1".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert(header::ALLOW, "GET,HEAD".parse().expect("header"));
        let e = api_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &Method::DELETE,
            &uri,
            &headers,
            String::new(),
        );
        assert_eq!(e.code, "method_not_allowed");
        assert_eq!(
            e.message,
            "DELETE is not allowed on /commands/a/1; it takes GET, HEAD"
        );
        assert_eq!(e.details, Some(json!({"allowed": ["GET", "HEAD"]})));
        let plain = |status, text: &str| {
            api_error(
                status,
                &Method::GET,
                &uri,
                &HeaderMap::new(),
                text.to_string(),
            )
        };
        let e = plain(
            StatusCode::BAD_REQUEST,
            "Invalid URL: Invalid UTF-8 in `id`",
        );
        assert_eq!(
            (e.code, e.message.as_str()),
            ("invalid_request", "Invalid URL: Invalid UTF-8 in `id`")
        );
        assert_eq!(
            plain(StatusCode::NOT_FOUND, "").message,
            "no route for /commands/a/1"
        );
        assert_eq!(plain(StatusCode::PAYLOAD_TOO_LARGE, "").code, "too_large");
        assert_eq!(
            plain(StatusCode::UNSUPPORTED_MEDIA_TYPE, "").code,
            "unsupported_media_type"
        );
        assert_eq!(
            plain(StatusCode::REQUEST_TIMEOUT, "").code,
            "request_timeout"
        );
        let e = plain(StatusCode::BAD_GATEWAY, "");
        assert_eq!((e.status, e.code), (StatusCode::BAD_GATEWAY, "internal"));
        assert!(e.details.is_some_and(|d| d["error_id"].is_string()));
    }
}
