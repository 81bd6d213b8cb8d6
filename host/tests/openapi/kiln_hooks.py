"""Schemathesis hooks for Kiln's OpenAPI test (host/tests/openapi.rs)."""

import json

import schemathesis


@schemathesis.serializer("application/wasm")
def wasm(ctx, value):
    """PUT /plugins/{name}: the generated value as the body's bytes."""
    if isinstance(value, bytes):
        return {"data": value}
    if isinstance(value, str):
        return {"data": value.encode("utf-8")}
    return {"data": json.dumps(value).encode("utf-8")}
