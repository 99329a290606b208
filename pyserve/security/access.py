"""Who may call what: bearer tokens checked per scope, with no protocol in it.

Every transport calls :meth:`AccessControl.authenticate` with the scope of the call and the value
of its ``authorization`` header (HTTP) or metadata key (gRPC), so the rules are the same everywhere.
The scopes, and who needs a token for them:

============  ==========================================================  ==========================
scope         what                                                        token needed
============  ==========================================================  ==========================
health        ``/v2/health/live``, ``/v2/health/ready``, model readiness  never (Kubernetes probes)
metrics       ``/metrics``                                                with ``--auth-metrics``
inference     infer, server and model metadata, config, statistics        with ``--auth-inference``
control       ``/v2/repository/...`` (index, load, unload, traffic,        whenever tokens are
              aliases, rollouts) and ``/v2/logs`` (the payload log)         configured
============  ==========================================================  ==========================

A refusal is an UNAUTHENTICATED :class:`~pyserve.errors.PyserveError` (HTTP 401, gRPC UNAUTHENTICATED),
counted in ``pyserve_auth_failures_total{scope, reason}``; the token is never logged nor kept.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from pyserve.errors import ErrorKind, PyserveError
from pyserve.security.tokens import TokenSet, load_tokens

log = logging.getLogger("pyserve.security")

TOKENS_ENV = "PYSERVE_AUTH_TOKENS"


class Scope(enum.Enum):
    """What a call touches; :class:`AccessControl` decides per scope whether it needs a token."""

    HEALTH = "health"
    METRICS = "metrics"
    INFERENCE = "inference"
    CONTROL = "control"


@dataclass(frozen=True)
class AccessSettings:
    """The access-control part of the server's settings.

    ``token_file``: a file of tokens, re-read when it changes (``--auth-token-file``);
    ``env_tokens``: the value of ``$PYSERVE_AUTH_TOKENS`` (read by the command line; never shown in a
    repr); ``inference``, ``metrics``: require a token for those scopes too;
    ``allow_unauthenticated_control``: serve model control on a non-loopback address without tokens.
    """

    token_file: Path | None = None
    env_tokens: str | None = field(default=None, repr=False)
    inference: bool = False
    metrics: bool = False
    allow_unauthenticated_control: bool = False

    @property
    def configured(self) -> bool:
        """Whether any token source is given."""
        return self.token_file is not None or self.env_tokens is not None


class Unauthenticated(PyserveError):
    """A call refused for want of a valid token; ``reason`` is ``missing`` (no Authorization),
    ``malformed`` (not ``Bearer <token>``) or ``invalid`` (no configured token matches)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(ErrorKind.UNAUTHENTICATED, message)
        self.reason = reason


_MESSAGES = {
    "missing": "this endpoint requires a bearer token: send 'Authorization: Bearer <token>'",
    "malformed": "the Authorization header must be 'Bearer <token>'",
    "invalid": "the bearer token is not valid",
}


def bearer_token(authorization: str | None) -> tuple[str | None, str]:
    """The token of an ``Authorization`` value (RFC 6750 section 2.1: ``Bearer <token>``, the scheme's
    case ignored) and "" or, when there is none, None and the reason (``missing``, ``malformed``)."""
    if authorization is None or not authorization.strip():
        return None, "missing"
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None, "malformed"
    return token, ""


class AccessControl:
    """The token check of every transport. ``tokens`` are swapped whole on reload (one reference
    assignment), so a check never sees half of a new set.

    Raises INVALID_ARGUMENT at construction for a token source that cannot be read or is malformed,
    and for ``inference``/``metrics`` asked for without any token.
    """

    def __init__(self, settings: AccessSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.tokens: TokenSet = load_tokens(settings.token_file, settings.env_tokens, TOKENS_ENV)
        if (settings.inference or settings.metrics) and not self.tokens:
            flags = " and ".join(f for f, on in (("--auth-inference", settings.inference),
                                                ("--auth-metrics", settings.metrics)) if on)
            raise PyserveError(ErrorKind.INVALID_ARGUMENT, f"{flags} need tokens: give --auth-token-file "
                               f"or ${TOKENS_ENV}")
        self._reload_lock = threading.Lock()
        self.failures = Counter(
            "pyserve_auth_failures", "Calls refused for want of a valid bearer token (HTTP 401), by scope and "
            "reason (missing, malformed, invalid).", ["scope", "reason"],
            registry=registry) if registry is not None else None
        self.reloads = Counter(
            "pyserve_auth_token_reloads", "Re-reads of the token file, by result (ok; failed: the tokens "
            "in force were kept).", ["result"], registry=registry) if registry is not None else None

    def required(self, scope: Scope) -> bool:
        """Whether calls of ``scope`` need a token on this server."""
        if not self.tokens or scope is Scope.HEALTH:
            return False
        if scope is Scope.CONTROL:
            return True
        return self.settings.inference if scope is Scope.INFERENCE else self.settings.metrics

    def authenticate(self, scope: Scope, authorization: str | None) -> str | None:
        """The id of the token that ``authorization`` (``Bearer <token>``) carries, or None when
        ``scope`` needs no token here. Raises :class:`Unauthenticated` (counted) otherwise."""
        if not self.required(scope):
            return None
        token, reason = bearer_token(authorization)
        token_id = self.tokens.match(token) if token is not None else None
        if token_id is None:
            reason = reason or "invalid"
            if self.failures is not None:
                self.failures.labels(scope.value, reason).inc()
            raise Unauthenticated(reason, _MESSAGES[reason])
        return token_id

    def reload(self) -> bool:
        """Re-reads the token file (SIGHUP, or the file changed). A file that cannot be read or is
        malformed is logged at ERROR and the tokens in force are kept. True when the set was replaced.
        Thread-safe; call it off the event loop's thread (it reads a file)."""
        if self.settings.token_file is None:
            return False
        with self._reload_lock:
            try:
                tokens = load_tokens(self.settings.token_file, self.settings.env_tokens, TOKENS_ENV)
            except PyserveError as e:
                log.error("tokens not reloaded, the %d in force are kept: %s", len(self.tokens), e.message)
                if self.reloads is not None:
                    self.reloads.labels("failed").inc()
                return False
            self.tokens = tokens
        log.info("tokens reloaded from %s: %d in force (ids %s)", self.settings.token_file, len(tokens),
                 ", ".join(tokens.ids))
        if self.reloads is not None:
            self.reloads.labels("ok").inc()
        return True


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only: every address it resolves
    to is a loopback address (127.0.0.0/8, ::1). "" and 0.0.0.0 (all interfaces) are not."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # the bind fails anyway, with its own message
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def exposure_error(host: str, model_control: bool, access: AccessControl) -> str | None:
    """Why a server must not start with these settings, or None: model control enabled on a
    non-loopback address, with no token and no ``--allow-unauthenticated-control``."""
    if not model_control or access.tokens or access.settings.allow_unauthenticated_control:
        return None
    if is_loopback(host):
        return None
    return (f"model control (load, unload, traffic, rollouts) would be open to anyone who reaches "
            f"--host {host}: give tokens (--auth-token-file FILE or ${TOKENS_ENV}), or "
            "--disable-model-control, or --allow-unauthenticated-control if the network is trusted "
            "(see the README's Security section)")
