"""TLS for the server's listeners, from PEM files, reloaded without a restart.

The listening socket keeps one :class:`ssl.SSLContext` for its life (asyncio and uvloop capture it
when they start serving), so a reload cannot replace it. Instead the listener's context has an SNI
callback, which OpenSSL runs on every ClientHello (with or without a server name): it switches the
new connection to the context in force (``SSLObject.context = ...``, OpenSSL's SSL_set_SSL_CTX, the
documented way of choosing a certificate per connection in Python's :mod:`ssl`). A reload builds a
new context from the files and swaps the reference; connections already open keep theirs.

Client certificates (mTLS): ``client_ca`` is the CA bundle that client certificates must chain to;
``client_auth`` ``required`` refuses a handshake without a valid certificate, ``optional`` asks for
one and refuses only an invalid one.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from pyserve.errors import PyserveError, invalid

log = logging.getLogger("pyserve.security")

CLIENT_AUTH = ("none", "optional", "required")


@dataclass(frozen=True)
class ClientCertificate:
    """Who a client certificate names, for the audit log: ``subject`` as an RFC 4514 string
    (``CN=ops-laptop,O=Example``, most significant RDN last, as ``openssl x509 -nameopt RFC2253``
    prints it) and ``sha256``, the certificate's SHA-256 fingerprint (hex, the DER bytes hashed), which
    tells apart two certificates with the same subject."""

    subject: str
    sha256: str


# Attribute names of Python's ``getpeercert()`` -> RFC 4514 / RFC 4519 short names.
_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
                "stateOrProvinceName": "ST", "localityName": "L", "streetAddress": "STREET",
                "domainComponent": "DC", "userId": "UID"}


def _rfc4514_value(value: str) -> str:
    """An attribute value escaped as RFC 4514 section 2.4 asks."""
    out = "".join("\\" + c if c in ',+"\\<>;' else c for c in value)
    if out.startswith((" ", "#")):
        out = "\\" + out
    if out.endswith(" ") and len(out) > 1:
        out = out[:-1] + "\\ "
    return out


def client_certificate(transport: Any) -> ClientCertificate | None:
    """The verified client certificate of a TLS connection (``transport``: an asyncio transport),
    None without TLS or without a certificate (``--tls-client-auth`` none, or optional and none sent).
    Read once per connection, after the handshake."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    try:
        der = ssl_object.getpeercert(binary_form=True)
        parsed = ssl_object.getpeercert()
    except (ValueError, ssl.SSLError):  # handshake not done (cannot happen after connection_made)
        return None
    if not der:
        return None
    rdns = []
    for rdn in reversed((parsed or {}).get("subject", ())):
        rdns.append("+".join(f"{_SHORT_NAMES.get(k, k)}={_rfc4514_value(v)}" for k, v in rdn))
    return ClientCertificate(",".join(rdns), hashlib.sha256(der).hexdigest())


@dataclass(frozen=True)
class TlsSettings:
    """``cert``: the server's certificate chain (PEM, leaf first); ``key``: its private key (PEM, not
    encrypted); ``client_ca``: CA certificates (PEM) that client certificates must chain to, or None;
    ``client_auth``: ``none``, ``optional`` or ``required`` (needs ``client_ca``)."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    client_auth: str = "none"

    @property
    def files(self) -> list[Path]:
        """The files a reload re-reads."""
        return [self.cert, self.key, *([self.client_ca] if self.client_ca is not None else [])]


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """A server-side context from ``settings``: TLS 1.2 or later, ALPN ``http/1.1``, Python's default
    ciphers. INVALID_ARGUMENT naming the file for a certificate, key or CA that cannot be loaded
    (missing, unreadable, not PEM, a key that does not match the certificate)."""
    if settings.client_auth not in CLIENT_AUTH:
        raise invalid(f"TLS client auth: expected one of {', '.join(CLIENT_AUTH)}, got {settings.client_auth!r}")
    if settings.client_auth != "none" and settings.client_ca is None:
        raise invalid("TLS client auth needs the CA of the client certificates (--tls-client-ca)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(settings.cert, settings.key)
    except (OSError, ssl.SSLError) as e:
        raise invalid(f"TLS certificate {settings.cert} with key {settings.key}: cannot load them: "
                      f"{_why(e)}") from None
    if settings.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=settings.client_ca)
        except (OSError, ssl.SSLError) as e:
            raise invalid(f"TLS client CA {settings.client_ca}: cannot load it: {_why(e)}") from None
        ctx.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                           "required": ssl.CERT_REQUIRED}[settings.client_auth]
    return ctx


def _why(e: Exception) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    return getattr(e, "strerror", None) or str(e)


class ReloadingTls:
    """The context a listener is created with (:attr:`listener`), whose connections get the context in
    force (:attr:`current`); :meth:`reload` replaces the latter from the files.

    Raises INVALID_ARGUMENT (see :func:`server_context`) when the files cannot be loaded at start."""

    def __init__(self, settings: TlsSettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.current = server_context(settings)
        self.listener = server_context(settings)
        self.listener.sni_callback = self._select
        self._lock = threading.Lock()
        self.reloads = Counter("pyserve_tls_reloads", "Reloads of the TLS certificate, key and client CA "
                               "files, by result (ok; failed: the certificate in force was kept).", ["result"],
                               registry=registry) if registry is not None else None

    def _select(self, conn: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        conn.context = self.current  # type: ignore[misc]  # settable on server-side connections

    def reload(self) -> bool:
        """Builds a context from the files and puts it in force for new connections; on failure (a
        file half written, a key that does not match yet) logs ERROR and keeps the one in force. True
        when replaced. Thread-safe; call it off the event loop's thread (it reads files)."""
        with self._lock:
            try:
                ctx = server_context(self.settings)
            except PyserveError as e:
                log.error("TLS files not reloaded, the certificate in force is kept: %s", e.message)
                if self.reloads is not None:
                    self.reloads.labels("failed").inc()
                return False
            ctx.sni_callback = None
            self.current = ctx
        log.info("TLS certificate reloaded from %s", self.settings.cert)
        if self.reloads is not None:
            self.reloads.labels("ok").inc()
        return True
