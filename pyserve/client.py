"""Python clients of a pyserve (or any KServe v2) server: numpy in, numpy out.

``InferenceClient`` is synchronous and needs nothing beyond the standard library (``http.client``
with one kept-alive connection); ``AsyncInferenceClient`` uses aiohttp. Both speak three protocols:

- ``msgpack`` (default): tensors as raw bytes in a msgpack map, the cheapest to encode and decode;
- ``binary``: KServe JSON header plus the binary tensor extension, for inputs and outputs;
- ``json``: plain KServe JSON tensors (readable, slow for big tensors).

Both send a bearer token when given one (``token=``: every call carries ``Authorization: Bearer
<token>``), and speak HTTPS for an ``https://`` URL, verifying the server against the system's CAs or
the ``ssl_context`` given (:func:`tls_context` makes one from a CA file and a client certificate).

Server errors raise :class:`InferenceServerError` with the HTTP status, the matching ErrorKind and the
server's message; a server that cannot be reached is kind UNAVAILABLE, one that does not answer in
time is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pyserve.errors import ErrorKind, PyserveError
from pyserve.protocol import InferResponse, RequestedOutput, kserve, msgpack_codec
from pyserve.protocol.http_status import kind_of_status

__all__ = ["AsyncInferenceClient", "InferenceClient", "InferenceServerError", "read_token", "tls_context"]

PROTOCOLS = ("msgpack", "json", "binary")
_HEADER_LENGTH = kserve.HEADER_LENGTH


class InferenceServerError(PyserveError):
    """An error answered by the server (``status`` set) or met reaching it (``status`` None)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        kind: ErrorKind | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(kind or kind_of_status(status), message)
        self.status = status
        self.retry_after = retry_after  # seconds, from a 503's Retry-After header

    def __repr__(self) -> str:
        return f"InferenceServerError({self.kind.name}, status={self.status}, {self.message!r})"


def read_token(path: Path) -> str:
    """The bearer token in the file ``path``, read in the server's token-file format: blank lines
    and lines starting with ``#`` are skipped, a leading UTF-8 BOM is ignored, and a line is
    ``TOKEN`` or ``ID:TOKEN`` (the id is dropped); the first token is taken. ValueError naming the
    file (and the line, never the token) when it holds none or a malformed one; OSError or
    UnicodeDecodeError when it cannot be read."""
    text = Path(path).read_text("utf-8").removeprefix("\ufeff")
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        _, sep, token = stripped.partition(":")
        token = token.strip() if sep else stripped
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"token file {path}, line {lineno}: a token is one word (TOKEN or ID:TOKEN) "
                             "without whitespace")
        return token
    raise ValueError(f"token file {path}: no token in it (one token per line, TOKEN or ID:TOKEN)")


def tls_context(cafile: Path | None = None, certfile: Path | None = None,
                keyfile: Path | None = None) -> ssl.SSLContext:
    """A client-side TLS context: the server verified against ``cafile`` (PEM; default: the system's
    CAs) with its host name checked; ``certfile``/``keyfile``, the client's certificate for servers
    that ask for one (mutual TLS). OSError / ssl.SSLError for files that cannot be loaded."""
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


class _ClientBase:
    """What both clients share: URLs, request encoding and reply decoding; no I/O."""

    def __init__(self, url: str, protocol: str, timeout_s: float, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if "://" not in url:
            url = "http://" + url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http://host[:port][/prefix], got {url!r}")
        self.url = url.rstrip("/")
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        if token is not None and (not token or any(c.isspace() for c in token)):
            raise ValueError("token must be a non-empty string without whitespace")
        # Sent with every call; kept out of reprs and messages.
        self._auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self.ssl_context = ssl_context

    def _model_path(self, model: str, version: str | int | None) -> str:
        path = f"{self._prefix}/v2/models/{urllib.parse.quote(model, safe='')}"
        if version is not None and version != "":
            path += f"/versions/{urllib.parse.quote(str(version), safe='')}"
        return path

    def _control(self, action: str, model: str, version: str | int | None = None, alias: str | None = None,
                 doc: dict | None = None) -> tuple[str, str, bytes, dict[str, str]]:
        """(method, path, body, headers) of a model-control call: ``load``, ``unload`` (of the model, or of
        one ``version``), ``traffic`` (GET), ``set_traffic``, ``set_alias``, ``remove_alias``, ``rollout``
        (GET), ``start_rollout``, ``rollout_pause|resume|promote|abort``."""
        base = f"{self._prefix}/v2/repository/models/{urllib.parse.quote(model, safe='')}"
        if action in ("load", "unload"):
            if version is not None and version != "":
                base += f"/versions/{urllib.parse.quote(str(version), safe='')}"
            method, path = "POST", f"{base}/{action}"
        elif action == "traffic":
            method, path = "GET", f"{base}/traffic"
        elif action == "set_traffic":
            method, path = "PUT", f"{base}/traffic"
        elif action in ("rollout", "start_rollout"):
            method, path = ("GET" if action == "rollout" else "POST"), f"{base}/rollout"
        elif action.startswith("rollout_"):
            method, path = "POST", f"{base}/rollout/{action.removeprefix('rollout_')}"
        else:
            method = "PUT" if action == "set_alias" else "DELETE"
            path = f"{base}/aliases/{urllib.parse.quote(str(alias), safe='')}"
        body = orjson.dumps(doc) if doc is not None else b""
        return method, path, body, {"Content-Type": "application/json"}

    def _infer_request(
        self,
        model: str,
        inputs: dict[str, Any],
        version: str | int | None,
        outputs: list[str] | None,
        request_id: str | None,
        parameters: dict[str, Any] | None,
    ) -> tuple[str, bytes, dict[str, str]]:
        """The path, body and headers of an infer request in this client's protocol."""
        arrays = {name: np.asarray(values) for name, values in inputs.items()}
        path = self._model_path(model, version) + "/infer"
        if self.protocol == "msgpack":
            body = msgpack_codec.encode_request(
                arrays, request_id=request_id, parameters=parameters, outputs=outputs
            )
            ctype = msgpack_codec.CONTENT_TYPE
            return path, body, {"Content-Type": ctype, "Accept": ctype}
        binary = self.protocol == "binary"
        params = dict(parameters or {})
        if outputs is None:
            if binary:
                params["binary_data_output"] = True
            requested = None
        else:
            requested = [RequestedOutput(name, binary) for name in outputs]
        body, header_length = kserve.encode_request(
            arrays, binary=binary, request_id=request_id, parameters=params, outputs=requested
        )
        headers = {
            "Content-Type": "application/json" if header_length is None else "application/octet-stream"
        }
        if header_length is not None:
            headers[_HEADER_LENGTH] = str(header_length)
        return path, body, headers

    def _infer_result(self, status: int, headers: Any, body: bytes) -> dict[str, np.ndarray]:
        """The outputs of an infer reply, or the error it carries raised."""
        if status != 200:
            raise self._error(status, headers, body)
        try:
            resp: InferResponse
            if (headers.get("Content-Type") or "").startswith(msgpack_codec.CONTENT_TYPE):
                resp = msgpack_codec.decode_response(body)
            else:
                resp = kserve.decode_response(body, headers.get(_HEADER_LENGTH))
        except PyserveError as e:
            raise InferenceServerError(
                f"malformed infer reply from {self.url}: {e.message}", status=status, kind=ErrorKind.INTERNAL
            ) from None
        return resp.outputs

    def _json_result(self, status: int, headers: Any, body: bytes) -> dict:
        if status != 200:
            raise self._error(status, headers, body)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise InferenceServerError(
                f"reply from {self.url} is not JSON: {e}", status=status, kind=ErrorKind.INTERNAL
            ) from None
        return doc

    def _bool_result(self, status: int, headers: Any, body: bytes) -> bool:
        """Health and readiness: 200 is yes; 404 (unknown) and 503 (not ready) are no; else an error."""
        if status == 200:
            return True
        if status in (404, 503):
            return False
        raise self._error(status, headers, body)

    def _error(self, status: int, headers: Any, body: bytes) -> InferenceServerError:
        """The InferenceServerError of an error reply (``{"error": ...}``, or any text)."""
        message = None
        try:
            doc = orjson.loads(body)
            if isinstance(doc, dict) and isinstance(doc.get("error"), str):
                message = doc["error"]
        except orjson.JSONDecodeError:
            pass
        if message is None:
            text = body[:500].decode("utf-8", "replace").strip()
            message = text or f"HTTP {status} from {self.url}"
        retry_after = None
        if headers.get("Retry-After"):
            try:
                retry_after = float(headers.get("Retry-After"))
            except ValueError:
                pass
        return InferenceServerError(message, status=status, retry_after=retry_after)

    def _unreachable(self, e: BaseException) -> InferenceServerError:
        detail = str(e) or type(e).__name__
        return InferenceServerError(
            f"cannot reach the server at {self.url}: {detail}", kind=ErrorKind.UNAVAILABLE
        )

    def _timed_out(self) -> InferenceServerError:
        return InferenceServerError(
            f"no reply from {self.url} within {self.timeout_s} s", kind=ErrorKind.DEADLINE_EXCEEDED
        )


class InferenceClient(_ClientBase):
    """Synchronous client over one kept-alive HTTP connection (not thread-safe: one per thread)."""

    def __init__(
        self, url: str = "http://127.0.0.1:8000", protocol: str = "msgpack", timeout_s: float = 60.0,
        *, token: str | None = None, ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(url, protocol, timeout_s, token, ssl_context)
        self._conn: http.client.HTTPConnection | None = None

    def infer(
        self,
        model: str,
        inputs: dict[str, Any],
        *,
        version: str | int | None = None,
        outputs: list[str] | None = None,
        request_id: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``; returns the outputs (all, or those named in ``outputs``)."""
        path, body, headers = self._infer_request(model, inputs, version, outputs, request_id, parameters)
        return self._infer_result(*self._request("POST", path, body, headers))

    def is_live(self) -> bool:
        """Whether the server process is up."""
        return self._bool_result(*self._request("GET", f"{self._prefix}/v2/health/live"))

    def is_ready(self) -> bool:
        """Whether the server is ready to serve (its models loaded)."""
        return self._bool_result(*self._request("GET", f"{self._prefix}/v2/health/ready"))

    def model_ready(self, model: str, version: str | int | None = None) -> bool:
        """Whether ``model`` (at ``version``) is loaded and ready; False when unknown."""
        return self._bool_result(*self._request("GET", self._model_path(model, version) + "/ready"))

    def model_metadata(self, model: str, version: str | int | None = None) -> dict:
        """The KServe metadata of ``model``: name, versions, platform, inputs, outputs."""
        return self._json_result(*self._request("GET", self._model_path(model, version)))

    def server_metadata(self) -> dict:
        """The KServe metadata of the server: name, version, extensions."""
        return self._json_result(*self._request("GET", f"{self._prefix}/v2"))

    def load_model(self, model: str, version: str | int | None = None) -> None:
        """Loads (or reloads) ``model``, or only its ``version`` (a number or an alias), the other
        versions untouched (``POST /v2/repository/models/{m}[/versions/{v}]/load``)."""
        self._json_result(*self._request(*self._control("load", model, version)))

    def unload_model(self, model: str, version: str | int | None = None) -> None:
        """Unloads ``model``, or only its ``version``, once their accepted requests are answered."""
        self._json_result(*self._request(*self._control("unload", model, version)))

    def traffic_policy(self, model: str) -> dict:
        """``model``'s traffic policy: ``{"aliases": ..., "weights": ..., "routing_header": ...}``."""
        return self._json_result(*self._request(*self._control("traffic", model)))

    def set_traffic_policy(self, model: str, policy: dict, reason: str = "") -> dict:
        """Replaces ``model``'s traffic policy (see docs/release.md); returns the policy now in force."""
        return self._json_result(*self._request(*self._control("set_traffic", model, doc={**policy, "reason": reason})))

    def set_alias(self, model: str, alias: str, version: str | int, reason: str = "") -> dict:
        """Sets or moves ``alias`` of ``model`` to ``version`` (a loaded version, or an alias)."""
        doc = {"version": str(version), "reason": reason}
        return self._json_result(*self._request(*self._control("set_alias", model, alias=alias, doc=doc)))

    def remove_alias(self, model: str, alias: str, reason: str = "") -> dict:
        """Removes ``alias`` of ``model``; returns the policy now in force."""
        doc = {"reason": reason}
        return self._json_result(*self._request(*self._control("remove_alias", model, alias=alias, doc=doc)))

    def rollout(self, model: str) -> dict:
        """The state of ``model``'s rollout (spec, phase, step, weights, gates, history)."""
        return self._json_result(*self._request(*self._control("rollout", model)))

    def start_rollout(self, model: str, spec: dict, reason: str = "") -> dict:
        """Starts a rollout of ``model`` (``spec``: candidate, steps, ...; docs/release.md); its state."""
        return self._json_result(*self._request(*self._control("start_rollout", model, doc={**spec, "reason": reason})))

    def rollout_action(self, model: str, action: str, reason: str = "", full: bool = False) -> dict:
        """``pause``, ``resume``, ``promote`` (``full``: to 100% now) or ``abort`` ``model``'s rollout."""
        doc: dict[str, Any] = {"reason": reason, **({"full": True} if full else {})}
        return self._json_result(*self._request(*self._control(f"rollout_{action}", model, doc=doc)))

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, bytes]:
        for attempt in range(2):
            reused = self._conn is not None
            if self._conn is None:
                if self._scheme == "https":
                    self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s,
                                                             context=self.ssl_context)
                else:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
            conn = self._conn
            try:
                conn.request(method, path, body=body, headers={**(headers or {}), **self._auth})
                resp = conn.getresponse()
                data = resp.read()
            except TimeoutError:
                self.close()
                raise self._timed_out() from None
            except (http.client.HTTPException, OSError) as e:
                self.close()
                # The server may have closed an idle kept-alive connection: retry once on a new one.
                stale = isinstance(e, (ConnectionResetError, BrokenPipeError, http.client.BadStatusLine))
                if reused and stale and attempt == 0:
                    continue
                raise self._unreachable(e) from e
            if resp.will_close:
                self.close()
            return resp.status, resp.headers, data
        raise AssertionError("unreachable")  # the loop returns or raises


class AsyncInferenceClient(_ClientBase):
    """asyncio client on an aiohttp session (made on first use, inside the running loop)."""

    def __init__(
        self, url: str = "http://127.0.0.1:8000", protocol: str = "msgpack", timeout_s: float = 60.0,
        *, token: str | None = None, ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(url, protocol, timeout_s, token, ssl_context)
        self._session: Any = None

    async def infer(
        self,
        model: str,
        inputs: dict[str, Any],
        *,
        version: str | int | None = None,
        outputs: list[str] | None = None,
        request_id: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs``; returns the outputs (all, or those named in ``outputs``)."""
        path, body, headers = self._infer_request(model, inputs, version, outputs, request_id, parameters)
        return self._infer_result(*await self._request("POST", path, body, headers))

    async def is_live(self) -> bool:
        """Whether the server process is up."""
        return self._bool_result(*await self._request("GET", f"{self._prefix}/v2/health/live"))

    async def is_ready(self) -> bool:
        """Whether the server is ready to serve (its models loaded)."""
        return self._bool_result(*await self._request("GET", f"{self._prefix}/v2/health/ready"))

    async def model_ready(self, model: str, version: str | int | None = None) -> bool:
        """Whether ``model`` (at ``version``) is loaded and ready; False when unknown."""
        return self._bool_result(*await self._request("GET", self._model_path(model, version) + "/ready"))

    async def model_metadata(self, model: str, version: str | int | None = None) -> dict:
        """The KServe metadata of ``model``: name, versions, platform, inputs, outputs."""
        return self._json_result(*await self._request("GET", self._model_path(model, version)))

    async def server_metadata(self) -> dict:
        """The KServe metadata of the server: name, version, extensions."""
        return self._json_result(*await self._request("GET", f"{self._prefix}/v2"))

    async def load_model(self, model: str, version: str | int | None = None) -> None:
        """Loads (or reloads) ``model``, or only its ``version`` (a number or an alias), the other
        versions untouched (``POST /v2/repository/models/{m}[/versions/{v}]/load``)."""
        self._json_result(*await self._request(*self._control("load", model, version)))

    async def unload_model(self, model: str, version: str | int | None = None) -> None:
        """Unloads ``model``, or only its ``version``, once their accepted requests are answered."""
        self._json_result(*await self._request(*self._control("unload", model, version)))

    async def traffic_policy(self, model: str) -> dict:
        """``model``'s traffic policy: ``{"aliases": ..., "weights": ..., "routing_header": ...}``."""
        return self._json_result(*await self._request(*self._control("traffic", model)))

    async def set_traffic_policy(self, model: str, policy: dict, reason: str = "") -> dict:
        """Replaces ``model``'s traffic policy (see docs/release.md); returns the policy now in force."""
        return self._json_result(*await self._request(*self._control("set_traffic", model, doc={**policy, "reason": reason})))

    async def set_alias(self, model: str, alias: str, version: str | int, reason: str = "") -> dict:
        """Sets or moves ``alias`` of ``model`` to ``version`` (a loaded version, or an alias)."""
        doc = {"version": str(version), "reason": reason}
        return self._json_result(*await self._request(*self._control("set_alias", model, alias=alias, doc=doc)))

    async def remove_alias(self, model: str, alias: str, reason: str = "") -> dict:
        """Removes ``alias`` of ``model``; returns the policy now in force."""
        doc = {"reason": reason}
        return self._json_result(*await self._request(*self._control("remove_alias", model, alias=alias, doc=doc)))

    async def rollout(self, model: str) -> dict:
        """The state of ``model``'s rollout (spec, phase, step, weights, gates, history)."""
        return self._json_result(*await self._request(*self._control("rollout", model)))

    async def start_rollout(self, model: str, spec: dict, reason: str = "") -> dict:
        """Starts a rollout of ``model`` (``spec``: candidate, steps, ...; docs/release.md); its state."""
        return self._json_result(*await self._request(*self._control("start_rollout", model, doc={**spec, "reason": reason})))

    async def rollout_action(self, model: str, action: str, reason: str = "", full: bool = False) -> dict:
        """``pause``, ``resume``, ``promote`` (``full``: to 100% now) or ``abort`` ``model``'s rollout."""
        doc: dict[str, Any] = {"reason": reason, **({"full": True} if full else {})}
        return self._json_result(*await self._request(*self._control(f"rollout_{action}", model, doc=doc)))

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, bytes]:
        import aiohttp  # only the async client needs it: the sync one stays stdlib-only

        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context) if self.ssl_context is not None else None
            self._session = aiohttp.ClientSession(
                base_url=self._origin, timeout=aiohttp.ClientTimeout(total=self.timeout_s), connector=connector
            )
        try:
            async with self._session.request(method, path, data=body, headers={**(headers or {}), **self._auth}) as resp:
                data = await resp.read()
                return resp.status, resp.headers, data
        except asyncio.TimeoutError:  # noqa: UP041 (not the builtin TimeoutError before 3.11)
            raise self._timed_out() from None
        except aiohttp.ClientError as e:
            raise self._unreachable(e) from e
