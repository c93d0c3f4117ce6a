"""Declaring HTTP endpoints once: route, models, rights, and docs.

Each resource module makes a :class:`Routes` and decorates its handlers::

    routes = Routes("clinics")

    @routes.post("/api/v1/clinics", body=ClinicIn, returns=ClinicOut, status=201,
                 roles={Role.ADMIN})
    async def create_clinic(call: Call[ClinicIn, None]) -> ClinicOut:
        "Create a clinic (tenant)."
        ...

The wrapper parses and validates the body (JSON only, unknown fields refused)
and the query string against pydantic models, checks the caller's role, calls
the handler, and serialises what it returns. The same declarations build the
OpenAPI 3.1 document, so the document describes exactly what is served.

Path parameters of the form ``{name:uuid}`` match only UUIDs, so a malformed
id is a plain 404 and never reaches SQL.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID

import asyncpg
from aiohttp import web
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import models_json_schema

from wadud import jsonin
from wadud.config import Settings
from wadud.errors import Forbidden, NotFound, Unauthorized, UnsupportedMediaType
from wadud.principal import Principal, Role
from wadud.state import keys
from wadud.web import idempotency
from wadud.web.api_keys import API_KEY, ApiKey, InvalidApiKey

__all__ = [
    "EARLIEST",
    "LATEST",
    "ApiModel",
    "Call",
    "Instant",
    "Principal",
    "Role",
    "Routes",
    "file_body",
    "in_sane_range",
    "openapi",
]

B = TypeVar("B", bound=BaseModel | None)
Q = TypeVar("Q", bound=BaseModel | None)

_UUID_RE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# ``{name}`` or ``{name:regex}``; the regex may hold one level of braces
# (``{seq:\d{1,18}}``).
_PARAM = re.compile(r"\{(\w+)(?::((?:[^{}]|\{[^{}]*\})+))?\}")


class ApiModel(BaseModel):
    """Base of request, query and response models. Unknown fields are an
    error. JSON bodies are validated strictly (a number is not a string);
    query strings, being text, convert (``?limit=10`` is an int)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any, info: ValidationInfo) -> Any:
        # PostgreSQL text cannot hold U+0000; refuse it here as a 422 rather
        # than let it reach SQL as a 500.
        if _has_nul(value):
            raise ValueError("text may not contain the NUL character")
        # What a client sends (the Routes wrapper passes this context) holds
        # no instant PostgreSQL or our date arithmetic cannot take.
        if info.context and info.context.get("request") and not _sane_instants(value):
            raise ValueError(f"instants lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
        return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


#: The instants a request may name. PostgreSQL's timestamptz ends in year
#: 294276 but Python's datetime ends in 9999, and year 1 with an offset is
#: before year 1 in UTC: either way a 500. No consultation, slot or report
#: lies outside these.
EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def in_sane_range(when: dt.datetime) -> bool:
    """Whether ``when`` lies in [EARLIEST, LATEST) (a naive one read as UTC)."""
    if when.tzinfo is None or when.utcoffset() is None:
        when = when.replace(tzinfo=dt.UTC)
    try:
        return EARLIEST <= when < LATEST
    except OverflowError:
        return False


def _sane_instants(value: Any) -> bool:
    if isinstance(value, dt.datetime):
        return in_sane_range(value)
    if isinstance(value, list | tuple):
        return all(_sane_instants(v) for v in value)
    return True


def _iso(value: Any) -> Any:
    # JSON bodies are validated in strict mode, where a datetime is never
    # parsed from a string; parse ISO 8601 here so a JSON timestamp is
    # accepted (and a naive one still refused by AwareDatetime).
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value


def _check_range(value: dt.datetime) -> dt.datetime:
    if not in_sane_range(value):
        raise ValueError(f"instants lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return value


#: A timezone-aware ISO 8601 instant between EARLIEST and LATEST, in a body or
#: a query string. Every request model's instants are range-checked anyway
#: (:class:`ApiModel`); this type also parses JSON strings in strict mode.
Instant = Annotated[AwareDatetime, BeforeValidator(_iso), AfterValidator(_check_range)]


#: Who may call: anyone (``public``), with or without a bearer token
#: (``optional``), any signed-in user (``any``), users of these roles, or a
#: live API key presented as HTTP Basic credentials (``api_key``,
#: wadud.web.api_keys).
Auth = Literal["public", "optional", "any", "api_key"] | frozenset[Role] | set[Role]


@dataclass
class Call(Generic[B, Q]):
    """What a handler gets: the request, the validated body and query, and
    the caller."""

    request: web.Request
    body: B
    query: Q
    principal: Principal | None

    @property
    def pool(self) -> asyncpg.Pool:
        return self.request.app[keys.DB]

    @property
    def settings(self) -> Settings:
        return self.request.app[keys.SETTINGS]

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def path_uuid(self, name: str) -> UUID:
        return UUID(self.request.match_info[name])

    @property
    def api_key(self) -> ApiKey:
        """The caller's key, for handlers whose route takes one."""
        if API_KEY not in self.request:
            raise InvalidApiKey("this endpoint needs an API key (HTTP Basic: KEY_ID:SECRET)")
        return self.request[API_KEY]

    @property
    def user(self) -> Principal:
        """The caller, for handlers whose route requires one."""
        if self.principal is None:
            raise Unauthorized("this endpoint needs a bearer token")
        return self.principal

    def overseen_clinic(self) -> UUID:
        """The path's ``clinic_id``, if the caller :meth:`~Principal.oversees`
        it; else NotFound, as to anyone else a clinic they may not act on is
        no clinic."""
        clinic_id = self.path_uuid("clinic_id")
        if not self.user.oversees(clinic_id):
            raise NotFound("no such clinic")
        return clinic_id


Handler = Callable[[Call[Any, Any]], Awaitable[Any]]


@dataclass
class Endpoint:
    method: str
    path: str  # as served, with aiohttp patterns
    doc_path: str  # as documented, OpenAPI style
    handler: Handler
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    returns: Any
    status: int
    auth: Auth
    tag: str
    summary: str
    description: str
    params: list[tuple[str, str | None]]
    raw_body: dict[str, Any] | None = None
    responses: dict[int, str] = field(default_factory=dict)
    #: False for answers that hold secrets (tokens, links with tokens): the
    #: idempotency store never keeps or replays them.
    replay: bool = True
    #: Request headers the handler reads, name to JSON schema (documented, so
    #: the schemathesis run sends them too).
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)


#: Every endpoint the app serves, in installation order: the OpenAPI document's source.
ENDPOINTS: web.AppKey[list[Endpoint]] = web.AppKey("endpoints", list)


def file_body(
    types: Iterable[str], description: str = "The file itself; its type is judged by its content."
) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` (a route's ``raw_body``) of a file sent as
    the raw request body, in one of the media ``types``."""
    content = {t: {"schema": {"type": "string", "format": "binary"}} for t in sorted(types)}
    return {"required": True, "description": description, "content": content}


class Routes:
    def __init__(self, tag: str, description: str = "") -> None:
        self.tag = tag
        self.description = description
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        returns: Any = None,
        status: int = 200,
        auth: Auth = "any",
        raw_body: dict[str, Any] | None = None,
        responses: dict[int, str] | None = None,
        replay: bool = True,
        headers: dict[str, dict[str, Any]] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register a handler. ``auth``: ``"public"`` (no token looked at),
        ``"optional"`` (a token if given), ``"any"`` (any valid token), or a set
        of roles. ``returns``: a model, ``list[Model]``, or ``None`` (204 /
        handler builds its own ``web.Response``). ``raw_body``: an OpenAPI
        requestBody for handlers that read a non-JSON body themselves."""

        def deco(fn: Handler) -> Handler:
            params = [(m.group(1), m.group(2)) for m in _PARAM.finditer(path)]
            served = _PARAM.sub(
                lambda m: f"{{{m.group(1)}:{_UUID_RE}}}" if m.group(2) == "uuid" else m.group(0),
                path,
            )
            doc_path = _PARAM.sub(lambda m: f"{{{m.group(1)}}}", path)
            doc = (fn.__doc__ or "").strip()
            summary, _, description = doc.partition("\n")
            auth_value: Auth = frozenset(auth) if isinstance(auth, set) else auth
            self.endpoints.append(
                Endpoint(
                    method=method.upper(),
                    path=served,
                    doc_path=doc_path,
                    handler=fn,
                    body=body,
                    query=query,
                    returns=returns,
                    status=status,
                    auth=auth_value,
                    tag=self.tag,
                    summary=summary.strip() or fn.__name__.replace("_", " "),
                    description=description.strip(),
                    params=params,
                    raw_body=raw_body,
                    responses=dict(responses or {}),
                    replay=replay,
                    headers=dict(headers or {}),
                )
            )
            return fn

        return deco

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)

    def install(self, app: web.Application) -> None:
        app[ENDPOINTS].extend(self.endpoints)
        for ep in self.endpoints:
            app.router.add_route(ep.method, ep.path, _wrap(ep))


def _check_auth(ep: Endpoint, request: web.Request, principal: Principal | None) -> None:
    if ep.auth in ("public", "optional"):
        return
    if ep.auth == "api_key":
        if API_KEY not in request:
            raise InvalidApiKey("this endpoint needs an API key (HTTP Basic: KEY_ID:SECRET)")
        return
    if principal is None:
        raise Unauthorized("this endpoint needs a bearer token")
    if ep.auth == "any":
        return
    assert isinstance(ep.auth, frozenset)
    if principal.role not in ep.auth:
        raise Forbidden(f"role {principal.role.value} may not {ep.method} {ep.doc_path}")


#: Validation context of what a client sent (see ApiModel._no_nul).
_REQUEST = {"request": True}


async def _parse_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    if not request.body_exists:
        # No body at all is an empty object: a body whose every field has a
        # default (a note that may be left out) needs none, and one with
        # required fields gets 422 naming them, not 415 for a type never sent.
        return jsonin.validate(model, b"{}", context=_REQUEST)
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    return jsonin.validate(model, await jsonin.read_bytes(request), context=_REQUEST)


def _parse_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        info = model.model_fields.get(key)
        is_list = info is not None and getattr(info.annotation, "__origin__", None) is list
        data[key] = values if is_list or len(values) > 1 else values[0]
    return model.model_validate(data, context=_REQUEST)


def _serialise(value: Any) -> bytes:
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    if isinstance(value, list):
        items = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
        return json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def _wrap(ep: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        principal = None if ep.auth == "public" else request.get(keys.PRINCIPAL)
        _check_auth(ep, request, principal)
        body = await _parse_body(request, ep.body) if ep.body is not None else None
        query = _parse_query(request, ep.query) if ep.query is not None else None
        result = await ep.handler(Call(request, body, query, principal))
        if isinstance(result, web.StreamResponse):
            return result
        if result is None:
            return web.Response(status=204 if ep.status == 200 else ep.status)
        return web.Response(
            body=_serialise(result), status=ep.status, content_type="application/json"
        )

    handler.__name__ = ep.handler.__name__
    if not ep.replay:
        setattr(handler, idempotency.NO_REPLAY, True)
    return handler


# -- OpenAPI ---------------------------------------------------------------

_PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
    "additionalProperties": True,
}


def _model_of(returns: Any) -> tuple[type[BaseModel] | None, bool]:
    if isinstance(returns, type) and issubclass(returns, BaseModel):
        return returns, False
    args = getattr(returns, "__args__", None)
    if getattr(returns, "__origin__", None) is list and args:
        inner = args[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner, True
    return None, False


def openapi(endpoints: list[Endpoint], *, title: str, version: str) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = []
    for ep in endpoints:
        if ep.body is not None:
            models.append((ep.body, "validation"))
        model, _ = _model_of(ep.returns)
        if model is not None:
            models.append((model, "serialization"))
    refs, schema = models_json_schema(models, ref_template="#/components/schemas/{model}")
    components = dict(schema.get("$defs", {}))
    components["Problem"] = _PROBLEM

    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "operationId": ep.handler.__name__,
            "tags": [ep.tag],
            "summary": ep.summary,
        }
        if ep.description:
            op["description"] = ep.description
        params: list[dict[str, Any]] = []
        for name, kind in ep.params:
            p_schema: dict[str, Any] = {"type": "string"}
            if kind == "uuid":
                p_schema["format"] = "uuid"
            elif kind:
                p_schema["pattern"] = f"^{kind}$"
            params.append({"name": name, "in": "path", "required": True, "schema": p_schema})
        if ep.query is not None:
            q_schema = ep.query.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, prop in q_schema.get("properties", {}).items():
                components.update(q_schema.get("$defs", {}))
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in q_schema.get("required", []),
                        "schema": prop,
                        **({"explode": True} if prop.get("type") == "array" else {}),
                    }
                )
        for name, h_schema in ep.headers.items():
            params.append({"name": name, "in": "header", "required": False, "schema": h_schema})
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(ep.body, "validation")]}},
            }
        elif ep.raw_body is not None:
            op["requestBody"] = ep.raw_body
        responses: dict[str, Any] = {}
        model, many = _model_of(ep.returns)
        if model is not None:
            ref = refs[(model, "serialization")]
            responses[str(ep.status)] = {
                "description": "Success",
                "content": {
                    "application/json": {"schema": {"type": "array", "items": ref} if many else ref}
                },
            }
        elif ep.returns is None:
            code = 204 if ep.status == 200 else ep.status
            responses[str(code)] = {"description": "Success"}
        else:
            responses[str(ep.status)] = {"description": "Success", **ep.returns}
        for code, text in ep.responses.items():
            responses.setdefault(str(code), {"description": text})
        problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        errors = {400: "Malformed request", 422: "Invalid values"}
        if ep.auth == "api_key":
            errors[401] = "Missing, invalid or revoked API key"
        elif ep.auth not in ("public", "optional"):
            errors[401] = "Missing or invalid token"
            if ep.auth != "any":
                errors[403] = "Role not allowed"
        if ep.params:
            errors[404] = "Not found"
        for code, text in errors.items():
            responses.setdefault(str(code), {"description": text, "content": problem})
        op["responses"] = responses
        if ep.auth == "api_key":
            op["security"] = [{"api_key": []}]
        elif ep.auth not in ("public", "optional"):
            op["security"] = [{"bearer": []}]
        elif ep.auth == "optional":
            op["security"] = [{}, {"bearer": []}]
        paths.setdefault(ep.doc_path, {})[ep.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "api_key": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "An API key: its id as the user name, its secret as"
                    " the password (wadud key create).",
                },
            },
        },
    }
