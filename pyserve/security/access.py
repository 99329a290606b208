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

Two kinds of token: control tokens (``--auth-token-file``, ``$PYSERVE_AUTH_TOKENS``) are good for
every scope; inference tokens (``--inference-token-file``, ``$PYSERVE_INFERENCE_TOKENS``) for
inference and metrics only, so the clients of a model cannot change what it serves.

A call without a valid token is refused UNAUTHENTICATED (HTTP 401, gRPC UNAUTHENTICATED); an
inference token on a control call PERMISSION_DENIED (HTTP 403, gRPC PERMISSION_DENIED). Both are
counted in ``pyserve_auth_failures_total{scope, reason}``; a token is never logged nor kept.
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
from pyserve.security.tokens import TokenSet, TokenSource, load_tokens

log = logging.getLogger("pyserve.security")

TOKENS_ENV = "PYSERVE_AUTH_TOKENS"
INFERENCE_TOKENS_ENV = "PYSERVE_INFERENCE_TOKENS"


class Scope(enum.Enum):
    """What a call touches; :class:`AccessControl` decides per scope whether it needs a token."""

    HEALTH = "health"
    METRICS = "metrics"
    INFERENCE = "inference"
    CONTROL = "control"


@dataclass(frozen=True)
class AccessSettings:
    """The access-control part of the server's settings.

    ``token_file``: a file of control tokens, re-read when it changes (``--auth-token-file``);
    ``env_tokens``: the value of ``$PYSERVE_AUTH_TOKENS`` (read by the command line; never shown in a
    repr); ``inference_token_file``, ``env_inference_tokens``: the same for inference tokens
    (``--inference-token-file``, ``$PYSERVE_INFERENCE_TOKENS``); ``inference``, ``metrics``: require
    a token for those scopes too; ``allow_unauthenticated_control``: serve model control on a
    non-loopback address without tokens.
    """

    token_file: Path | None = None
    env_tokens: str | None = field(default=None, repr=False)
    inference_token_file: Path | None = None
    env_inference_tokens: str | None = field(default=None, repr=False)
    inference: bool = False
    metrics: bool = False
    allow_unauthenticated_control: bool = False

    def sources(self) -> tuple[TokenSource, TokenSource]:
        """The control and the inference token sources."""
        return (TokenSource(self.token_file, self.env_tokens, TOKENS_ENV, control=True),
                TokenSource(self.inference_token_file, self.env_inference_tokens, INFERENCE_TOKENS_ENV,
                            control=False, prefix="inference"))

    @property
    def files(self) -> list[Path]:
        """The token files, re-read when they change."""
        return [p for p in (self.token_file, self.inference_token_file) if p is not None]


class Unauthenticated(PyserveError):
    """A call refused for its token; ``reason`` is ``missing`` (no Authorization), ``malformed`` (not
    ``Bearer <token>``), ``invalid`` (no configured token matches): kind UNAUTHENTICATED; or
    ``insufficient_scope`` (an inference token on a control call): kind PERMISSION_DENIED, with
    ``token_id`` the id of the token."""

    def __init__(self, reason: str, message: str, token_id: str | None = None) -> None:
        kind = ErrorKind.PERMISSION_DENIED if reason == "insufficient_scope" else ErrorKind.UNAUTHENTICATED
        super().__init__(kind, message)
        self.reason = reason
        self.token_id = token_id


_MESSAGES = {
    "missing": "this endpoint requires a bearer token: send 'Authorization: Bearer <token>'",
    "malformed": "the Authorization header must be 'Bearer <token>'",
    "invalid": "the bearer token is not valid",
    "insufficient_scope": "this token is good for inference only, not for model control",
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
        self.tokens: TokenSet = load_tokens(*settings.sources())
        if (settings.inference or settings.metrics) and not self.tokens:
            flags = " and ".join(f for f, on in (("--auth-inference", settings.inference),
                                                ("--auth-metrics", settings.metrics)) if on)
            verb = "need" if settings.inference and settings.metrics else "needs"
            raise PyserveError(ErrorKind.INVALID_ARGUMENT, f"{flags} {verb} tokens: give --auth-token-file, "
                               f"--inference-token-file, ${TOKENS_ENV} or ${INFERENCE_TOKENS_ENV}")
        if (settings.inference_token_file is not None or settings.env_inference_tokens is not None) and not (
                settings.inference or settings.metrics):
            raise PyserveError(ErrorKind.INVALID_ARGUMENT, "inference tokens are checked only with "
                               "--auth-inference or --auth-metrics: give one of them")
        self._reload_lock = threading.Lock()
        self.failures = Counter(
            "pyserve_auth_failures", "Calls refused for their bearer token, by scope and reason (missing, "
            "malformed, invalid: HTTP 401; insufficient_scope, an inference token on model control: 403).", ["scope", "reason"],
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
        found = self.tokens.match(token) if token is not None else None
        if found is None:
            reason = reason or "invalid"
        elif scope is Scope.CONTROL and not found[1]:
            reason = "insufficient_scope"
        else:
            return found[0]
        if self.failures is not None:
            self.failures.labels(scope.value, reason).inc()
        raise Unauthenticated(reason, _MESSAGES[reason], found[0] if found is not None else None)

    def reload(self) -> bool:
        """Re-reads the token files (SIGHUP, or a file changed). A file that cannot be read or is
        malformed is logged at ERROR and the tokens in force are kept. True when the set was replaced.
        Thread-safe; call it off the event loop's thread (it reads files)."""
        if not self.settings.files:
            return False
        with self._reload_lock:
            try:
                tokens = load_tokens(*self.settings.sources())
            except PyserveError as e:
                log.error("tokens not reloaded, the %d in force are kept: %s", len(self.tokens), e.message)
                if self.reloads is not None:
                    self.reloads.labels("failed").inc()
                return False
            self.tokens = tokens
        log.info("tokens reloaded from %s: %d in force (ids %s)", ", ".join(map(str, self.settings.files)),
                 len(tokens), ", ".join(tokens.ids))
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
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


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
