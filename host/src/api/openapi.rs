//! `GET /openapi.json`: the OpenAPI 3 description, built from the same route
//! table the router uses in spirit: each route below names its handler.

use axum::Json;
use serde_json::{Value, json};

/// One documented operation.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    params: &'static [(&'static str, &'static str, &'static str)],
    body: Option<&'static str>,
    responses: &'static [(&'static str, &'static str)],
}

/// Operations whose success body is Server-Sent Events rather than JSON.
const EVENT_STREAM_PATHS: &[&str] = &["/events/live", "/streams/{stream_id}/live"];

const OPS: &[Op] = &[
    Op {
        method: "post",
        path: "/commands/{aggregate}/{id}",
        summary: "Submit a command to an aggregate instance",
        params: &[
            ("aggregate", "path", "string"),
            ("id", "path", "string"),
            ("Idempotency-Key", "header", "string"),
        ],
        body: Some("application/json"),
        responses: &[
            ("200", "events appended"),
            ("400", "invalid_request or invalid_command"),
            ("404", "unknown aggregate"),
            ("409", "wrong_expected_version or idempotency_conflict"),
            ("413", "too_large"),
            ("415", "unsupported_media_type"),
            ("422", "rejected"),
            ("500", "plugin_trap"),
            ("503", "plugin_timeout or unavailable"),
        ],
    },
    Op {
        method: "get",
        path: "/streams/{stream_id}/events",
        summary: "Read a stream's events",
        params: &[
            ("stream_id", "path", "string"),
            ("from_version", "query", "integer"),
            ("limit", "query", "integer"),
        ],
        body: None,
        responses: &[("200", "a page of events"), ("404", "stream has no events")],
    },
    Op {
        method: "get",
        path: "/streams/{stream_id}/state",
        summary: "A stream's state, now or at a version or time",
        params: &[
            ("stream_id", "path", "string"),
            ("at_version", "query", "integer"),
            ("at_time", "query", "string"),
        ],
        body: None,
        responses: &[("200", "the state, with ETag"), ("404", "not found")],
    },
    Op {
        method: "get",
        path: "/events",
        summary: "Read the global log",
        params: &[
            ("from_position", "query", "integer"),
            ("limit", "query", "integer"),
            ("types", "query", "string"),
        ],
        body: None,
        responses: &[("200", "a page of events")],
    },
    Op {
        method: "get",
        path: "/events/live",
        summary: "Follow the global log as Server-Sent Events (catch-up, then live); \
                  resumes after Last-Event-ID; without from_position, starts at the head",
        params: &[
            ("from_position", "query", "integer"),
            ("Last-Event-ID", "header", "integer"),
        ],
        body: None,
        responses: &[
            (
                "200",
                "text/event-stream of `event: event`, `id: <position>`, `data: <event JSON>`",
            ),
            ("400", "invalid_request"),
            ("503", "unavailable (shutting down)"),
        ],
    },
    Op {
        method: "get",
        path: "/streams/{stream_id}/live",
        summary: "Follow one stream as Server-Sent Events (catch-up, then live); \
                  resumes after Last-Event-ID; a stream with no events yet is waited for",
        params: &[
            ("stream_id", "path", "string"),
            ("from_version", "query", "integer"),
            ("Last-Event-ID", "header", "integer"),
        ],
        body: None,
        responses: &[
            (
                "200",
                "text/event-stream of `event: event`, `id: <position>`, `data: <event JSON>`",
            ),
            ("400", "invalid_request"),
            ("503", "unavailable (shutting down)"),
        ],
    },
    Op {
        method: "get",
        path: "/plugins",
        summary: "Loaded plugins, and versions compiling",
        params: &[],
        body: None,
        responses: &[("200", "list of plugins")],
    },
    Op {
        method: "put",
        path: "/plugins/{name}",
        summary: "Deploy a plugin version (admin); a projection rebuilds, or builds a shadow with mode=shadow",
        params: &[("name", "path", "string"), ("mode", "query", "string")],
        body: Some("application/wasm"),
        responses: &[
            ("200", "deployed"),
            ("400", "not a component, or a bad mode"),
            ("401", "unauthorized"),
            ("422", "invalid_plugin"),
        ],
    },
    Op {
        method: "get",
        path: "/plugins/{name}/history",
        summary: "Versions deployed under a name, newest first",
        params: &[("name", "path", "string")],
        body: None,
        responses: &[("200", "versions"), ("404", "no such plugin")],
    },
    Op {
        method: "post",
        path: "/plugins/{name}/rollback",
        summary: "Deploy an earlier version again (admin); body {\"hash\"} optional",
        params: &[("name", "path", "string")],
        body: Some("application/json"),
        responses: &[
            ("200", "deployed"),
            ("401", "unauthorized"),
            ("404", "no earlier version"),
        ],
    },
    Op {
        method: "get",
        path: "/projections",
        summary: "Every projection's status",
        params: &[],
        body: None,
        responses: &[("200", "list of statuses")],
    },
    Op {
        method: "get",
        path: "/projections/{name}",
        summary: "A projection's status: generation, state, position, head, lag, error, rebuild",
        params: &[("name", "path", "string")],
        body: None,
        responses: &[("200", "status"), ("404", "no such projection")],
    },
    Op {
        method: "get",
        path: "/projections/{name}/rows/{key}",
        summary: "One row, optionally once the projection has processed min_position",
        params: &[
            ("name", "path", "string"),
            ("key", "path", "string"),
            ("min_position", "query", "integer"),
            ("timeout_ms", "query", "integer"),
        ],
        body: None,
        responses: &[
            ("200", "the row's JSON value"),
            ("400", "invalid_request"),
            ("404", "no such projection or row"),
            ("503", "min_position not reached in time"),
        ],
    },
    Op {
        method: "get",
        path: "/projections/{name}/rows",
        summary: "Rows by key prefix, paged",
        params: &[
            ("name", "path", "string"),
            ("prefix", "query", "string"),
            ("after", "query", "string"),
            ("limit", "query", "integer"),
            ("min_position", "query", "integer"),
            ("timeout_ms", "query", "integer"),
        ],
        body: None,
        responses: &[
            ("200", "rows and the next key"),
            ("400", "invalid_request"),
            ("404", "no such projection"),
            ("503", "min_position not reached in time"),
        ],
    },
    Op {
        method: "post",
        path: "/projections/{name}/rebuild",
        summary: "Rebuild into a new generation (admin)",
        params: &[("name", "path", "string")],
        body: None,
        responses: &[
            ("202", "rebuilding"),
            ("401", "unauthorized"),
            ("404", "no such projection"),
        ],
    },
    Op {
        method: "post",
        path: "/projections/{name}/resume",
        summary: "Retry a failed projection or skip its poison event (admin); body {\"skip\": bool}",
        params: &[("name", "path", "string")],
        body: Some("application/json"),
        responses: &[
            ("200", "resumed"),
            ("401", "unauthorized"),
            ("404", "no such projection"),
            ("409", "conflict: it has not failed"),
        ],
    },
    Op {
        method: "get",
        path: "/sagas",
        summary: "Every saga: checkpoint, lag, instances per status, outbox depth, dead letters",
        params: &[],
        body: None,
        responses: &[("200", "statuses")],
    },
    Op {
        method: "get",
        path: "/sagas/{name}",
        summary: "One saga's status; `state` is `failed` (with `error`) when its plugin failed",
        params: &[("name", "path", "string")],
        body: None,
        responses: &[("200", "status"), ("404", "no such saga")],
    },
    Op {
        method: "post",
        path: "/sagas/{name}/resume",
        summary: "Retry the unit of work a saga's plugin failed on, or skip it (admin); body {\"skip\": bool}",
        params: &[("name", "path", "string")],
        body: Some("application/json"),
        responses: &[
            ("200", "resumed"),
            ("401", "unauthorized"),
            ("404", "no such saga"),
            ("409", "conflict: it has not failed"),
        ],
    },
    Op {
        method: "get",
        path: "/sagas/{name}/{instance}",
        summary: "A saga instance: state, status, pending commands, history of steps with their outcomes",
        params: &[("name", "path", "string"), ("instance", "path", "string")],
        body: None,
        responses: &[("200", "the instance"), ("404", "no such saga or instance")],
    },
    Op {
        method: "get",
        path: "/dead-letters",
        summary: "Saga commands that exhausted their attempts, oldest first, with their errors",
        params: &[("after", "query", "integer"), ("limit", "query", "integer")],
        body: None,
        responses: &[("200", "dead letters"), ("400", "invalid_request")],
    },
    Op {
        method: "post",
        path: "/dead-letters/{id}/retry",
        summary: "Put a dead letter back in its instance's outbox, attempts reset (admin)",
        params: &[("id", "path", "integer")],
        body: None,
        responses: &[
            ("202", "retrying"),
            ("401", "unauthorized"),
            ("404", "no such dead letter"),
            ("409", "conflict"),
        ],
    },
    Op {
        method: "get",
        path: "/projections/{name}/skips",
        summary: "Events skipped by operators",
        params: &[("name", "path", "string")],
        body: None,
        responses: &[("200", "skips"), ("404", "no such projection")],
    },
    Op {
        method: "get",
        path: "/projections/{name}/diff",
        summary: "Compare the active generation with the shadow (or building) one",
        params: &[("name", "path", "string"), ("sample", "query", "integer")],
        body: None,
        responses: &[
            ("200", "keys only in old, only in new, changed"),
            ("404", "no such projection"),
            ("409", "conflict: no second generation"),
        ],
    },
    Op {
        method: "post",
        path: "/projections/{name}/promote",
        summary: "Switch reads to the shadow generation once it has caught up (admin)",
        params: &[("name", "path", "string")],
        body: None,
        responses: &[
            ("202", "switching"),
            ("401", "unauthorized"),
            ("409", "conflict: no shadow"),
        ],
    },
    Op {
        method: "delete",
        path: "/projections/{name}/shadow",
        summary: "Drop the shadow generation (admin)",
        params: &[("name", "path", "string")],
        body: None,
        responses: &[
            ("200", "dropped; the serving version is current"),
            ("401", "unauthorized"),
            ("409", "conflict: no shadow"),
        ],
    },
    Op {
        method: "get",
        path: "/cluster",
        summary: "This host's id and every lease: which host runs each projection and saga",
        params: &[],
        body: None,
        responses: &[("200", "host and leases"), ("503", "unavailable")],
    },
    Op {
        method: "get",
        path: "/healthz",
        summary: "The process is up",
        params: &[],
        body: None,
        responses: &[("200", "ok")],
    },
    Op {
        method: "get",
        path: "/readyz",
        summary: "Store reachable, plugins loaded",
        params: &[],
        body: None,
        responses: &[("200", "ready"), ("503", "unavailable")],
    },
    Op {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics",
        params: &[],
        body: None,
        responses: &[("200", "text exposition")],
    },
];

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for op in OPS {
        let parameters: Vec<Value> = op
            .params
            .iter()
            .map(|(name, place, ty)| {
                json!({"name": name, "in": place, "required": *place == "path", "schema": {"type": ty}})
            })
            .collect();
        let responses: serde_json::Map<String, Value> = op
            .responses
            .iter()
            .map(|(status, description)| {
                let schema = if status.starts_with('2') {
                    json!({})
                } else {
                    json!({"$ref": "#/components/schemas/Error"})
                };
                let media = if status.starts_with('2') && EVENT_STREAM_PATHS.contains(&op.path) {
                    "text/event-stream"
                } else {
                    "application/json"
                };
                (
                    status.to_string(),
                    json!({"description": description, "content": {media: {"schema": schema}}}),
                )
            })
            .collect();
        let mut operation =
            json!({"summary": op.summary, "parameters": parameters, "responses": responses});
        if let Some(media) = op.body {
            operation["requestBody"] =
                json!({"required": true, "content": {media: {"schema": {}}}});
        }
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Kiln", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {"type": "object"}}
            }}
        }}}
    })
}

pub async fn openapi() -> Json<Value> {
    Json(document())
}
