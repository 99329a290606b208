"""Security of a server, with no protocol in it: bearer tokens and who may call what
(:mod:`~pyserve.security.access`, :mod:`~pyserve.security.tokens`), TLS contexts reloaded from their
files (:mod:`~pyserve.security.tls`, :mod:`~pyserve.security.reload`), and the management audit log
(:mod:`~pyserve.security.audit`). The transports call them; docs/security.md describes the model."""

from pyserve.security.access import (
    INFERENCE_TOKENS_ENV,
    TOKENS_ENV,
    AccessControl,
    AccessSettings,
    Scope,
    Unauthenticated,
    exposure_error,
    is_loopback,
)
from pyserve.security.audit import AuditRecord, ManagementAudit, read_audit
from pyserve.security.reload import FileWatcher
from pyserve.security.tls import ClientCertificate, ReloadingTls, TlsSettings, client_certificate, server_context

__all__ = ["INFERENCE_TOKENS_ENV", "TOKENS_ENV", "AccessControl", "AccessSettings", "AuditRecord", "ClientCertificate",
           "FileWatcher", "ManagementAudit",
           "ReloadingTls", "Scope", "TlsSettings", "Unauthenticated", "exposure_error", "is_loopback",
           "client_certificate", "read_audit", "server_context"]
