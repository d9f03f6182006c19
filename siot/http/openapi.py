"""`GET /v1/openapi.json`: the OpenAPI 3 document of the HTTP API (DESIGN §9), built once from
the table below, so a new endpoint is one entry here and a test checks every route is listed."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from siot.http.context import HttpContext
from siot.http.errors import json_response

POINT = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string"},
        "key": {"type": "string", "default": "0"},
        "time": {
            "oneOf": [{"type": "integer"}, {"type": "string", "format": "date-time"}],
            "description": "ns since the Unix epoch, or RFC 3339; omitted or 0 = now",
        },
        "value": {"description": "null, bool, number, string, list or map (bytes are answered as base64)"},
        "tombstone": {"type": "integer", "description": "odd = deleted"},
        "origin": {"type": "string", "description": "the writer; default: the user's id"},
    },
    "additionalProperties": False,
}
NODE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "parent": {"type": "string"},
        "points": {"type": "array", "items": {"$ref": "#/components/schemas/Point"}},
        "edgePoints": {"type": "array", "items": {"$ref": "#/components/schemas/Point"}},
    },
}
ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
OK = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
BUCKET = {
    "type": "object",
    "properties": {
        name: {"type": "integer" if name in ("time", "count") else "number"}
        for name in ("time", "count", "min", "max", "mean", "first", "last")
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _listing(field: str, schema: str) -> dict[str, Any]:
    return {"type": "object", "properties": {field: {"type": "array", "items": _ref(schema)}}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "bad input",
        401: "no, bad or expired token",
        403: "outside your scope or role",
        404: "unknown node",
        413: "body or batch too large",
        429: "too many failed logins (Retry-After)",
        503: "not ready, or the store is busy: retry",
    }
    return {str(code): _json(_ref("Error"), words[code]) for code in codes}


def _object_body(*fields: str) -> dict[str, Any]:
    """A required JSON object body of string fields."""
    properties = {field: {"type": "string"} for field in fields}
    schema = {"type": "object", "required": list(fields), "properties": properties}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str, description: str, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


ID = _param("id", "path", "node id", required=True)
TIME = "ns since the epoch or RFC 3339"
AUTHED = (400, 401, 403, 404)

PATHS: dict[str, dict[str, Any]] = {
    "/v1/auth": {
        "post": {
            "summary": "Log in: a bearer token for the other endpoints",
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["email", "password"],
                            "properties": {"email": {"type": "string"}, "password": {"type": "string"}},
                        }
                    }
                },
            },
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "token": {"type": "string"},
                            "expires": {"type": "string", "format": "date-time"},
                        },
                    }
                ),
                **_errors(400, 401, 429),
            },
        }
    },
    "/healthz": {
        "get": {
            "summary": "200 once every node client runs, else 503",
            "security": [],
            "responses": {"200": _json(OK), **_errors(503)},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus text format (docs/metrics.md); public unless --metrics-token is set",
            "security": [],
            "responses": {
                "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
                **_errors(401),
            },
        }
    },
    "/v1/nodes/{id}": {
        "get": {
            "summary": "A node as in nodes.* replies",
            "parameters": [ID, _param("parent", "query", "the edge to show it under")],
            "responses": {"200": _json(_ref("Node")), **_errors(*AUTHED)},
        },
        "delete": {
            "summary": "Delete the node's edge from its parent (tombstone)",
            "parameters": [ID, _param("parent", "query", "needed when the node has several parents")],
            "responses": {"200": _json(OK), **_errors(*AUTHED)},
        },
    },
    "/v1/nodes/{id}/children": {
        "get": {
            "summary": "The node's children",
            "parameters": [
                ID,
                _param("type", "query", "only children of this type"),
                _param("deleted", "query", "true: deleted ones too"),
            ],
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"nodes": {"type": "array", "items": _ref("Node")}}}
                ),
                **_errors(*AUTHED),
            },
        }
    },
    "/v1/nodes": {
        "post": {
            "summary": "Create a node under a parent",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["parent", "type"],
                            "properties": {
                                "parent": {"type": "string"},
                                "type": {"type": "string"},
                                "points": {"type": "array", "items": _ref("Point")},
                                "id": {"type": "string"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": _json({"type": "object", "properties": {"id": {"type": "string"}}}, "created"),
                **_errors(*AUTHED, 413),
            },
        }
    },
    "/v1/nodes/{id}/move": {
        "post": {
            "summary": "Move the node from one parent to another",
            "parameters": [ID],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["from", "to"],
                            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
                        }
                    }
                },
            },
            "responses": {"200": _json(OK), **_errors(*AUTHED)},
        }
    },
    "/v1/nodes/{id}/credentials": {
        "post": {
            "summary": "Issue a device (or edge) credential; the secret is in this answer only",
            "parameters": [ID],
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "kind": {"type": "string", "enum": ["device", "edge"]},
                                "rotate": {"type": "boolean"},
                                "grace": {"type": "number", "description": "seconds the old ones work"},
                                "parent": {"type": "string", "description": "an edge attaches here"},
                            },
                        }
                    }
                }
            },
            "responses": {"201": _json({"type": "object"}), **_errors(*AUTHED)},
        },
        "get": {
            "summary": "The node's credentials (no secrets)",
            "parameters": [ID],
            "responses": {"200": _json({"type": "object"}), **_errors(*AUTHED)},
        },
        "delete": {
            "summary": "Revoke the node's credentials (their connections are closed)",
            "parameters": [ID],
            "responses": {"200": _json({"type": "object"}), **_errors(*AUTHED)},
        },
    },
    "/v1/nodes/{id}/points": {
        "post": {
            "summary": "Write points; answered after commit",
            "parameters": [ID],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"oneOf": [_ref("Point"), {"type": "array", "items": _ref("Point")}]}
                    }
                },
            },
            "responses": {"200": _json(OK), **_errors(*AUTHED, 413)},
        }
    },
    "/v1/nodes/{id}/history": {
        "get": {
            "summary": "Logged values, raw or (with every=) in buckets",
            "parameters": [
                ID,
                _param("type", "query", "point type (required with every=)"),
                _param("key", "query", "point key (default: every key)"),
                _param("start", "query", f"inclusive; {TIME}"),
                _param("end", "query", f"exclusive; {TIME}"),
                _param("limit", "query", "at most this many points or buckets (default 10000)"),
                _param("every", "query", "bucket size: a number and s, m, h or d"),
            ],
            "responses": {
                "200": _json(
                    {
                        "oneOf": [
                            {
                                "type": "object",
                                "properties": {"points": {"type": "array", "items": _ref("Point")}},
                            },
                            {
                                "type": "object",
                                "properties": {"buckets": {"type": "array", "items": _ref("Bucket")}},
                            },
                        ]
                    }
                ),
                **_errors(*AUTHED),
            },
        }
    },
    "/v1/stream": {
        "get": {
            "summary": "Committed changes under a node as Server-Sent Events; id: is the point-log seq",
            "parameters": [
                _param("node", "query", "default: the node you hang under"),
                _param("Last-Event-ID", "header", "resume after this seq (from the point log)"),
                _param("access_token", "query", "the token, for EventSource (no headers)"),
            ],
            "responses": {
                "200": {
                    "description": 'events: data {"node","parent","points"}; event: reset when the log '
                    "cannot resume",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_errors(*AUTHED),
            },
        }
    },
    # The web UI's own endpoints (siot/web/endpoints.py says why each exists).
    "/v1/ui/me": {
        "get": {
            "summary": "The logged-in user, its role and the roots of its scope",
            "responses": {"200": _json({"type": "object"}), **_errors(401)},
        }
    },
    "/v1/ui/tree": {
        "get": {
            "summary": "Every node of the user's scope in one reply (id, parent, type, deleted, name)",
            "responses": {"200": _json({"type": "object"}), **_errors(401)},
        }
    },
    "/v1/ui/status": {
        "get": {
            "summary": "siot stats and siot sync status, for users under the instance root",
            "responses": {"200": _json({"type": "object"}), **_errors(401, 403)},
        }
    },
    "/v1/ui/nodes/{id}/undelete": {
        "post": {
            "summary": "Undelete the edge from a parent to the node",
            "parameters": [ID],
            "requestBody": _object_body("parent"),
            "responses": {"200": _json(OK), **_errors(*AUTHED)},
        }
    },
    "/v1/ui/nodes/{id}/mirror": {
        "post": {
            "summary": "Add an edge so that the node also sits under another parent",
            "parameters": [ID],
            "requestBody": _object_body("to"),
            "responses": {"200": _json(OK), **_errors(*AUTHED)},
        }
    },
    "/v1/openapi.json": {
        "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}), **_errors(401)}}
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "siot HTTP API", "version": "1", "description": "DESIGN §9; docs/http.md"},
    "paths": PATHS,
    "components": {
        "schemas": {"Point": POINT, "Node": NODE, "Error": ERROR, "Bucket": BUCKET},
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
    },
    "security": [{"bearer": []}],
}


async def get_openapi(_request: web.Request) -> web.Response:
    return json_response(DOCUMENT)


def setup(app: web.Application, _http: HttpContext) -> None:
    app.router.add_get("/v1/openapi.json", get_openapi)
