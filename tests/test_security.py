"""Access control, in-process: token files and their syntax, the constant-time comparison over every
token, the scopes that need a token, the refusal to expose model control, token reloads, the file
watcher and the management audit log's writer."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import orjson
import pytest
from conftest import wait_until
from prometheus_client import CollectorRegistry

from pyserve.errors import ErrorKind, PyserveError
from pyserve.security import (
    AccessControl,
    AccessSettings,
    AuditRecord,
    FileWatcher,
    ManagementAudit,
    Scope,
    Unauthenticated,
    exposure_error,
    is_loopback,
    read_audit,
)
from pyserve.security.access import bearer_token
from pyserve.security.tokens import TokenSet, TokenSource, load_tokens, parse_tokens

TOKEN_A = "Aq3vZ9-lM_0pTx7yW2kR5nB8"
TOKEN_B = "c2VjcmV0LXRva2VuLWJi+/=="


def access_with(tmp_path: Path, text: str, **flags: bool) -> AccessControl:
    path = tmp_path / "tokens"
    path.write_text(text)
    return AccessControl(AccessSettings(token_file=path, **flags), CollectorRegistry())


def failures(access: AccessControl, scope: str, reason: str) -> float:
    assert access.failures is not None
    return access.failures.labels(scope, reason)._value.get()


# -- token sources -------------------------------------------------------------------------------
def test_token_file_lines_ids_comments_and_defaults() -> None:
    pairs = parse_tokens(f"# ops tokens\n\nops:{TOKEN_A}\n  {TOKEN_B}  \n", "token file t", "file")
    assert pairs == [("ops", TOKEN_A), ("file-2", TOKEN_B)]


def test_env_tokens_split_on_commas() -> None:
    tokens = load_tokens(TokenSource(None, f"ci:{TOKEN_A}, {TOKEN_B}", "PYSERVE_AUTH_TOKENS", control=True),
                         TokenSource(None, "app-token-9876543210ab", "PYSERVE_INFERENCE_TOKENS", control=False, prefix="inference"))
    assert tokens.ids == ["ci", "env-2", "inference-env-1"]


@pytest.mark.parametrize("line", ["short", "has space in it 1234567890", "ünïcode-token-123456789", "x" * 15,
                                  "bad id!:" + TOKEN_A])
def test_malformed_tokens_are_refused_naming_the_line_not_the_token(line: str) -> None:
    with pytest.raises(PyserveError) as info:
        parse_tokens(f"{TOKEN_A}\n{line}\n", "token file t", "file")
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "token file t, line 2" in info.value.message
    assert line.partition(":")[2 if ":" in line else 0] not in info.value.message


def test_empty_or_missing_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(PyserveError, match="no token in it"):
        load_tokens(TokenSource(tmp_path / "empty", None, "E", control=True))
    with pytest.raises(PyserveError, match="cannot read it"):
        load_tokens(TokenSource(tmp_path / "missing", None, "E", control=True))


def test_two_tokens_with_one_id_are_refused() -> None:
    with pytest.raises(PyserveError, match="'ops' is given twice"):
        load_tokens(TokenSource(None, f"ops:{TOKEN_A}", "E", control=True),
                    TokenSource(None, f"ops:{TOKEN_B}", "F", control=False))


# -- comparison ----------------------------------------------------------------------------------
@pytest.mark.parametrize("presented", [TOKEN_A[:-1], TOKEN_A[:8], TOKEN_A + "x", TOKEN_A + TOKEN_A, "",
                                       TOKEN_A.upper(), " " + TOKEN_A, TOKEN_B[:-2]])
def test_only_the_exact_token_matches(presented: str) -> None:
    tokens = TokenSet.of(([("a", TOKEN_A)], True), ([("b", TOKEN_B)], False))
    assert tokens.match(TOKEN_A) == ("a", True) and tokens.match(TOKEN_B) == ("b", False)
    assert tokens.match(presented) is None


@pytest.mark.parametrize("presented", [TOKEN_A, TOKEN_B, "no-such-token-at-all-xx"])
def test_every_token_is_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch, presented: str) -> None:
    tokens = TokenSet.of(([("a", TOKEN_A), ("b", TOKEN_B)], True), ([("c", "third-token-0123456789")], False))
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(x: bytes, y: bytes) -> bool:
        calls.append((x, y))
        return real(x, y)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    tokens.match(presented)
    # Every token, whichever matched (none, the first, the second); digests of one length each time.
    assert len(calls) == 3
    assert {len(x) for x, _ in calls} == {len(y) for _, y in calls} == {32}


def test_bearer_header_parsing() -> None:
    assert bearer_token(f"Bearer {TOKEN_A}") == (TOKEN_A, "")
    assert bearer_token(f"bearer   {TOKEN_A} ") == (TOKEN_A, "")
    assert bearer_token(None) == (None, "missing")
    assert bearer_token("  ") == (None, "missing")
    assert bearer_token(f"Basic {TOKEN_A}") == (None, "malformed")
    assert bearer_token("Bearer") == (None, "malformed")
    assert bearer_token(f"Bearer {TOKEN_A} {TOKEN_B}") == (None, "malformed")


# -- scopes --------------------------------------------------------------------------------------
def test_without_tokens_nothing_needs_one() -> None:
    access = AccessControl(AccessSettings())
    assert not any(access.required(s) for s in Scope)
    assert access.authenticate(Scope.CONTROL, None) is None


def test_tokens_guard_control_only_by_default(tmp_path: Path) -> None:
    access = access_with(tmp_path, f"ops:{TOKEN_A}\n")
    assert [s for s in Scope if access.required(s)] == [Scope.CONTROL]
    assert access.authenticate(Scope.INFERENCE, None) is None
    assert access.authenticate(Scope.CONTROL, f"Bearer {TOKEN_A}") == "ops"
    for header, reason in ((None, "missing"), (f"Token {TOKEN_A}", "malformed"), (f"Bearer {TOKEN_A[:-1]}", "invalid")):
        with pytest.raises(Unauthenticated) as info:
            access.authenticate(Scope.CONTROL, header)
        assert info.value.kind is ErrorKind.UNAUTHENTICATED and info.value.reason == reason
        assert TOKEN_A[:10] not in info.value.message
        assert failures(access, "control", reason) == 1


def test_inference_and_metrics_flags(tmp_path: Path) -> None:
    access = access_with(tmp_path, f"{TOKEN_A}\n", inference=True, metrics=True)
    assert {s for s in Scope if access.required(s)} == {Scope.CONTROL, Scope.INFERENCE, Scope.METRICS}
    with pytest.raises(Unauthenticated):
        access.authenticate(Scope.INFERENCE, None)
    assert failures(access, "inference", "missing") == 1
    assert access.authenticate(Scope.HEALTH, None) is None


def test_inference_auth_without_tokens_is_refused() -> None:
    with pytest.raises(PyserveError, match="--auth-inference needs tokens"):
        AccessControl(AccessSettings(inference=True))
    with pytest.raises(PyserveError, match="inference tokens are checked only with --auth-inference"):
        AccessControl(AccessSettings(env_inference_tokens=TOKEN_B))


def test_inference_tokens_cannot_control_models(tmp_path: Path) -> None:
    (tmp_path / "inference").write_text(f"app:{TOKEN_B}\n")
    (tmp_path / "tokens").write_text(f"ops:{TOKEN_A}\n")
    access = AccessControl(AccessSettings(token_file=tmp_path / "tokens",
                                          inference_token_file=tmp_path / "inference", inference=True),
                           CollectorRegistry())
    assert access.authenticate(Scope.INFERENCE, f"Bearer {TOKEN_B}") == "app"
    assert access.authenticate(Scope.INFERENCE, f"Bearer {TOKEN_A}") == "ops"
    assert access.authenticate(Scope.CONTROL, f"Bearer {TOKEN_A}") == "ops"
    with pytest.raises(Unauthenticated) as info:
        access.authenticate(Scope.CONTROL, f"Bearer {TOKEN_B}")
    assert info.value.kind is ErrorKind.PERMISSION_DENIED and info.value.token_id == "app"
    assert failures(access, "control", "insufficient_scope") == 1


# -- exposure ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False), ("", False),
                                                ("::", False), ("10.1.2.3", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_open_control_on_a_public_address_is_refused(tmp_path: Path) -> None:
    open_access = AccessControl(AccessSettings())
    message = exposure_error("0.0.0.0", True, open_access)
    assert message is not None and "--auth-token-file" in message and "--allow-unauthenticated-control" in message
    assert exposure_error("127.0.0.1", True, open_access) is None
    assert exposure_error("0.0.0.0", False, open_access) is None  # --disable-model-control
    assert exposure_error("0.0.0.0", True, AccessControl(AccessSettings(allow_unauthenticated_control=True))) is None
    assert exposure_error("0.0.0.0", True, access_with(tmp_path, f"{TOKEN_A}\n")) is None


# -- reloads -------------------------------------------------------------------------------------
def test_reload_swaps_tokens_and_keeps_them_when_the_file_is_broken(tmp_path: Path) -> None:
    access = access_with(tmp_path, f"old:{TOKEN_A}\n")
    path = access.settings.token_file
    assert path is not None
    path.write_text(f"old:{TOKEN_A}\nnew:{TOKEN_B}\n")
    assert access.reload()
    assert access.authenticate(Scope.CONTROL, f"Bearer {TOKEN_B}") == "new"
    path.write_text(f"new:{TOKEN_B}\n")  # the old one retired
    assert access.reload()
    with pytest.raises(Unauthenticated):
        access.authenticate(Scope.CONTROL, f"Bearer {TOKEN_A}")
    for broken in ("", "tooshort\n"):
        path.write_text(broken)
        assert not access.reload()
        assert access.authenticate(Scope.CONTROL, f"Bearer {TOKEN_B}") == "new"
    assert access.reloads is not None
    assert access.reloads.labels("ok")._value.get() == 2 and access.reloads.labels("failed")._value.get() == 2


def test_file_watcher_runs_the_reload_of_a_changed_file(tmp_path: Path) -> None:
    watched, other = tmp_path / "a", tmp_path / "b"
    watched.write_text("1")
    other.write_text("1")
    seen: list[str] = []
    watcher = FileWatcher([([watched], lambda: seen.append("a")), ([other], lambda: seen.append("b"))], 0.01)
    watcher.start()
    try:
        # A Kubernetes Secret update: a new file renamed over the old one.
        (tmp_path / "a.new").write_text("2")
        os.replace(tmp_path / "a.new", watched)
        wait_until(lambda: "a" in seen, what="the reload of the changed file")
    finally:
        watcher.close()
    assert "b" not in seen


# -- audit log -----------------------------------------------------------------------------------
def record(**fields: object) -> AuditRecord:
    base: dict[str, object] = {"client": "10.0.0.1:5000", "token_id": "ops", "action": "load", "model": "m",
                               "version": None, "alias": None, "result": "ok", "status": 200}
    return AuditRecord(**{**base, **fields})  # type: ignore[arg-type]


def test_audit_records_are_appended_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    audit = ManagementAudit(path, CollectorRegistry())
    audit.record(record())
    audit.record(record(token_id=None, action="unload", result="UNAUTHENTICATED", status=401, error="no token"))
    audit.close()
    audit = ManagementAudit(path)  # appends, never rewrites
    audit.record(record(reason="r" * 5000))
    audit.close()
    rows = read_audit(path)
    assert [(r["action"], r["result"], r["status"], r["token_id"]) for r in rows] == [
        ("load", "ok", 200, "ops"), ("unload", "UNAUTHENTICATED", 401, None), ("load", "ok", 200, "ops")]
    assert set(rows[0]) == {"time", "protocol", "client", "token_id", "action", "model", "version", "alias",
                            "result", "status", "error", "reason", "client_cert_subject", "client_cert_sha256"}
    assert rows[0]["time"].endswith("Z") and len(rows[2]["reason"]) == 1000
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_full_audit_queue_drops_and_counts(tmp_path: Path) -> None:
    audit = ManagementAudit(None, CollectorRegistry(), queue_size=1)
    audit._queue.put(None)  # the writer stops: nothing drains the queue any more
    audit._thread.join()
    audit.record(record())  # fills the queue
    audit.record(record())
    assert audit.dropped is not None and audit.dropped._value.get() == 1


def test_an_audit_log_that_cannot_be_opened_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(PyserveError, match="cannot open it for appending"):
        ManagementAudit(tmp_path / "file" / "audit.jsonl")


def test_audit_lines_go_to_the_logger(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="pyserve.audit")
    audit = ManagementAudit(None)
    audit.record(record(action="set_alias", alias="stable"))
    audit.close()
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "pyserve.audit"]
    assert [(d["action"], d["alias"]) for d in lines] == [("set_alias", "stable")]


def test_one_line_token_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("short\n")
    with pytest.raises(PyserveError) as info:
        load_tokens(TokenSource(path, None, "E", control=True))
    assert f"token file {path}, line 1" in info.value.message and "short" not in info.value.message


def test_a_utf8_bom_before_the_first_token_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(b"\xef\xbb\xbf" + f"ops:{TOKEN_A}\n".encode())
    assert load_tokens(TokenSource(path, None, "E", control=True)).ids == ["ops"]


def test_the_client_reads_the_servers_token_file_format(tmp_path: Path) -> None:
    from pyserve.client import read_token

    path = tmp_path / "tokens"
    path.write_bytes(b"\xef\xbb\xbf# ops token\n\n" + f"  ops:{TOKEN_A}\n{TOKEN_B}\n".encode())
    assert read_token(path) == TOKEN_A
    path.write_text(f"{TOKEN_B}\n")
    assert read_token(path) == TOKEN_B
    path.write_text("# only a comment\n\nops: two words\n")
    with pytest.raises(ValueError) as info:
        read_token(path)
    assert f"token file {path}, line 3" in str(info.value) and "words" not in str(info.value)
    path.write_text("# only a comment\n")
    with pytest.raises(ValueError, match=f"token file {path}: no token"):
        read_token(path)


def test_a_client_certificate_subject_is_written_as_rfc_4514() -> None:
    """Most significant RDN last, short names, special characters escaped (RFC 4514 section 2.4)."""
    import hashlib

    from pyserve.security import client_certificate

    class SslObject:
        def getpeercert(self, binary_form: bool = False) -> Any:
            if binary_form:
                return b"DER bytes"
            return {"subject": ((("countryName", "DE"),), (("organizationName", "Example, Inc."),),
                                (("commonName", "#ops"), ("userId", "a+b")), (("1.2.3.4", " x=y ;"),))}

    class Transport:
        def __init__(self, ssl_object: Any) -> None:
            self.ssl_object = ssl_object

        def get_extra_info(self, name: str) -> Any:
            return self.ssl_object if name == "ssl_object" else None

    cert = client_certificate(Transport(SslObject()))
    assert cert is not None
    assert cert.subject == '1.2.3.4=\\ x=y \\;,CN=\\#ops+UID=a\\+b,O=Example\\, Inc.,C=DE'
    assert cert.sha256 == hashlib.sha256(b"DER bytes").hexdigest()
    assert client_certificate(Transport(None)) is None  # plain TCP
