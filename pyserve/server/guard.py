"""HTTP's side of access control: a route's handler wrapped with the token check of its scope, and
the management routes with the audit log (the rules are in :mod:`pyserve.security`).

A call refused for want of a valid token is answered 401 with ``WWW-Authenticate: Bearer`` (RFC 6750
section 3: with ``error="invalid_token"`` when a token was sent and is wrong), one whose token is good
for inference only 403 with ``error="insufficient_scope"``; both with the KServe error body
``{"error": "..."}``. A route whose scope needs no token on this server is not wrapped at all, so
the infer path costs nothing when inference is open.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import orjson

from pyserve.protocol.http_status import http_status, kind_of_status
from pyserve.security import AccessControl, AuditRecord, ManagementAudit, Scope, Unauthenticated
from pyserve.server.messages import Handler, Request, Response, error_response

REALM = "pyserve"
MAX_REASON_BODY = 64 << 10  # a body larger than this is not searched for the reason to audit


def unauthorized(error: Unauthenticated) -> Response:
    """The 401 (or 403) answer to a call refused for its token."""
    challenge = f'Bearer realm="{REALM}"'
    if error.reason == "insufficient_scope":
        challenge += ', error="insufficient_scope"'
    elif error.reason != "missing":
        challenge += ', error="invalid_token"'
    resp = error_response(http_status(error.kind), error.message)
    resp.headers = {**(resp.headers or {}), "WWW-Authenticate": challenge}
    return resp


def guarded(access: AccessControl, scope: Scope, handler: Handler,
            refused: Callable[[Request, Unauthenticated, Response], None] | None = None) -> Handler:
    """``handler``, behind the token check of ``scope`` when this server needs one for it;
    ``refused(request, error, response)`` is told of each call refused for its token."""
    if not access.required(scope):
        return handler

    @functools.wraps(handler)
    def wrapped(request: Request):  # type: ignore[no-untyped-def]
        try:
            access.authenticate(scope, request.headers.get("authorization"))
        except Unauthenticated as e:
            resp = unauthorized(e)
            if refused is not None:
                refused(request, e, resp)
            return resp
        return handler(request)

    return wrapped


def _reason_of(request: Request) -> str:
    """The ``reason`` field of a JSON body, "" when there is none (the handler checks the body)."""
    body = request.body
    if not body or len(body) > MAX_REASON_BODY:
        return ""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    reason = doc.get("reason") if type(doc) is dict else None
    return reason if type(reason) is str else ""


def _error_of(resp: Response) -> str:
    try:
        doc = orjson.loads(bytes(resp.body))
    except orjson.JSONDecodeError:
        return ""
    message = doc.get("error") if type(doc) is dict else None
    return message if type(message) is str else ""


def _audit(audit: ManagementAudit, request: Request, token_id: str | None, action: str, status: int,
           error: str, reason: str = "") -> None:
    """One audit record of a management call answered with ``status``."""
    info = request.match_info
    result = "ok" if status < 400 else kind_of_status(status).value
    cert = request.client_cert
    audit.record(AuditRecord(request.peer, token_id, action, info.get("model"), info.get("version"),
                             info.get("alias"), result, status, error, reason,
                             client_cert_subject=cert.subject if cert is not None else None,
                             client_cert_sha256=cert.sha256 if cert is not None else None))


def audited_control(access: AccessControl, audit: ManagementAudit, action: str | Callable[[Request], str],
                    handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A model-control handler behind the control scope's token check, writing one audit record per
    call: refused (401), failed (its status) or done. ``action`` is the audit action, or a function
    of the request giving it (rollout actions come from the path)."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        action_name = action(request) if callable(action) else action
        try:
            token_id = access.authenticate(Scope.CONTROL, request.headers.get("authorization"))
        except Unauthenticated as e:
            resp = unauthorized(e)
            _audit(audit, request, e.token_id, action_name, resp.status, e.message)
            return resp
        reason = _reason_of(request)
        try:
            resp = await handler(request)
        except BaseException:
            # The handler turns errors into responses; what escapes it (a cancelled task) is a 500.
            _audit(audit, request, token_id, action_name, 500,
                   "the call did not complete (see the server log)", reason)
            raise
        error = _error_of(resp) if resp.status >= 400 else ""
        _audit(audit, request, token_id, action_name, resp.status, error, reason)
        return resp

    return wrapped


def audited_read(access: AccessControl, audit: ManagementAudit, handler: Handler) -> Handler:
    """A read of the management API (index, traffic, rollout state, payload log) behind the control
    scope's token check; only a refused call is audited (action ``access``)."""

    def refused(request: Request, error: Unauthenticated, resp: Response) -> None:
        _audit(audit, request, error.token_id, "access", resp.status, error.message)

    return guarded(access, Scope.CONTROL, handler, refused)
