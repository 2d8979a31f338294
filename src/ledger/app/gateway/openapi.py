"""The gateway's OpenAPI 3.1 document (served at ``/v1/openapi.json``): the routes, and
the request bodies' JSON schemas as msgspec derives them from ``schema``, so the document
cannot drift from what the gateway decodes."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from ledger.app.gateway.schema import BODY_TYPES

_SIGNED = [{"ledgerSignature": []}]

# (method, path, summary, request body type or None, success statuses, who may call)
ROUTES: tuple[tuple[str, str, str, str | None, str, str], ...] = (
    ("post", "/v1/orders", "Place an order", "OrderBody", "200 accepted, 202 pending, 422 rejected", "trader"),
    ("get", "/v1/orders", "The account's open orders", None, "200", "trader or operator (?user=)"),
    ("get", "/v1/orders/{order_id}", "One order: status and fills", None, "200", "its owner or an operator"),
    ("delete", "/v1/orders/{order_id}", "Cancel an order by id", None, "200, 202, 422", "its owner"),
    ("delete", "/v1/orders/by-client-id/{client_id}", "Cancel an order by client order id", None, "200, 202, 422",
     "its owner"),
    ("post", "/v1/deposits", "Credit a deposit", "FundsBody", "200, 202, 422", "operator"),
    ("post", "/v1/withdrawals", "Debit a withdrawal", "FundsBody", "200, 202, 422", "operator"),
    ("post", "/v1/assets", "List an asset", "AssetBody", "200, 202, 422", "operator"),
    ("post", "/v1/symbols", "List a symbol", "SymbolBody", "200, 202, 422", "operator"),
    ("get", "/v1/balances", "The account's balances", None, "200, 504 (min_seq not reached)", "trader or operator"),
    ("get", "/v1/ledger/{asset}", "The account's balance changes of one asset, newest first", None, "200, 504",
     "trader or operator"),
    ("get", "/v1/trades", "The account's trades, newest first", None, "200, 504", "trader or operator"),
    ("get", "/v1/symbols/{symbol}/trades", "A symbol's recent trades", None, "200, 504", "any key"),
    ("get", "/v1/symbols/{symbol}/depth", "A symbol's best price levels", None, "200, 504", "any key"),
    ("get", "/v1/requests/{ref}", "A command's answer, after a 202", None, "200, 202, 422", "the key's account"),
    ("get", "/v1/market", "Listed assets and symbols", None, "200", "anyone"),
    ("get", "/v1/health", "Logs reachable, projection lag under the bound", None, "200, 503", "anyone"),
    ("get", "/v1/openapi.json", "This document", None, "200", "anyone"),
)


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document."""
    (schemas, components) = msgspec.json.schema_components(
        [BODY_TYPES[name] for name in BODY_TYPES], ref_template="#/components/schemas/{name}"
    )
    del schemas
    paths: dict[str, dict[str, Any]] = {}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for method, path, summary, body, statuses, who in ROUTES:
        operation: dict[str, Any] = {
            "summary": summary,
            "description": f"Who: {who}. Answers: {statuses}; errors are ErrorBody.",
            "responses": {"200": {"description": "success"}, "4XX": {"description": "refused", "content": error}},
        }
        if who != "anyone":
            operation["security"] = _SIGNED
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
            }
        parameters = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in path.split("/")
            if part.startswith("{")
        ]
        if method == "get" and who not in ("anyone",):
            parameters.append({"name": "min_seq", "in": "query", "required": False, "schema": {"type": "integer"}})
        if method in ("post", "delete"):
            parameters.append({"name": "Idempotency-Key", "in": "header", "required": False,
                               "schema": {"type": "string", "maxLength": 64}})
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "exchange-ledger gateway", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "ledgerSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Ledger-Signature",
                    "description": "Ed25519 over timestamp, method, path and body; see docs/gateway.md",
                }
            },
        },
    }
