//! The error answers many routes share, written once for the OpenAPI
//! document: each type lists statuses a route answers with the error body
//! (`ErrorBody`), and a route's `#[utoipa::path(responses(...))]` names the
//! sets that apply to it, then its own statuses. A route's own tuple for a
//! status comes after the sets and replaces theirs (utoipa keeps the last),
//! so a route can say more precisely what its 404 or 503 means.

use std::collections::BTreeMap;

use utoipa::IntoResponses;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, ResponsesBuilder, response};

/// An error answer: `description` and the error body.
pub fn error(description: &str) -> response::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

fn build(statuses: &[(&str, &str)]) -> BTreeMap<String, RefOr<response::Response>> {
    statuses
        .iter()
        .fold(ResponsesBuilder::new(), |b, (status, description)| {
            b.response(*status, error(description))
        })
        .build()
        .into()
}

/// Every route: `400 invalid_request` for a query parameter the route does
/// not take or cannot parse.
pub struct BadRequest;

impl IntoResponses for BadRequest {
    fn responses() -> BTreeMap<String, RefOr<response::Response>> {
        build(&[(
            "400",
            "`invalid_request`: a query parameter the route does not take, or one out of its range or of the wrong type",
        )])
    }
}

/// Routes that read or write the store: `500 internal`, `503 unavailable`,
/// and [`BadRequest`].
pub struct StoreRoute;

impl IntoResponses for StoreRoute {
    fn responses() -> BTreeMap<String, RefOr<response::Response>> {
        let mut responses = BadRequest::responses();
        responses.append(&mut build(&[
            (
                "500",
                "`internal`: a bug or broken data (`details.error_id`, also in the host's log)",
            ),
            (
                "503",
                "`unavailable`: the store cannot be reached or the host is shutting down; retry later",
            ),
        ]));
        responses
    }
}

/// Admin routes (`Authorization: Bearer $KILN_ADMIN_TOKEN`): `401
/// unauthorized`, and [`StoreRoute`]. The token is checked before anything
/// else, so 401 is what a request without it gets, whatever its path.
pub struct AdminRoute;

impl IntoResponses for AdminRoute {
    fn responses() -> BTreeMap<String, RefOr<response::Response>> {
        let mut responses = StoreRoute::responses();
        responses.append(&mut build(&[(
            "401",
            "`unauthorized`: no admin token is configured, or the request's `Authorization: Bearer` token is missing or wrong",
        )]));
        responses
    }
}

/// Admin routes that read an optional small JSON body: `400` for a bad
/// body, `413 too_large` over 4096 bytes, and [`AdminRoute`].
pub struct AdminBodyRoute;

impl IntoResponses for AdminBodyRoute {
    fn responses() -> BTreeMap<String, RefOr<response::Response>> {
        let mut responses = AdminRoute::responses();
        responses.append(&mut build(&[
            (
                "400",
                "`invalid_request`: a body that is not the JSON object described, or a bad query parameter",
            ),
            ("413", "`too_large`: a body over 4096 bytes (`details.limit`)"),
        ]));
        responses
    }
}
