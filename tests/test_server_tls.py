"""A real ``pyserve serve`` over TLS, with certificates made in the test (``cryptography``): HTTPS
clients (requests, pyserve's client, tritonclient), mutual TLS refusing a client without a
certificate, and a certificate replaced on disk served to new connections without a restart."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Repo, Server, free_port, run_onnx, wait_until

from pyserve.client import InferenceClient, InferenceServerError, tls_context

x509 = pytest.importorskip("cryptography.x509")
pytest.importorskip("onnx")
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

START_TIMEOUT_S = 60.0


@dataclass
class Issued:
    cert: Path
    key: Path


class CA:
    """A certificate authority made for one test: issues server and client certificates."""

    def __init__(self, folder: Path, name: str = "pyserve test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = folder / f"{name.replace(' ', '-')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, server: bool, stem: str) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1)))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.folder / f"{stem}.crt", self.folder / f"{stem}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        return issued


def served_common_name(port: int, ca: CA, client: Issued | None = None) -> str:
    """The common name of the certificate the server presents to a new connection."""
    ctx = ssl.create_default_context(cafile=str(ca.path))
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, \
            ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def start_tls_server(args: list[Any], log_dir: Path, ca: CA, client: Issued | None = None) -> Server:
    """``pyserve serve *args`` on a free port, waited on over HTTPS (verified against ``ca``)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "pyserve", "serve", *map(str, args), "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = Server(proc, f"https://127.0.0.1:{port}", port, log_path)
    cert = (str(client.cert), str(client.key)) if client is not None else None
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if requests.get(server.url + "/v2/health/ready", verify=str(ca.path), cert=cert, timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.05)  # a subprocess gives no event to await for "listening"
    proc.kill()
    proc.wait()
    pytest.fail(f"TLS server did not start; log:\n{server.log()[-3000:]}")


@pytest.fixture
def tls_servers(tmp_path: Path) -> Any:
    started: list[Server] = []

    def start(*args: Any, **kw: Any) -> Server:
        server = start_tls_server(*args, **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.returncode is None:
            server.stop()


@pytest.fixture
def models(repo: Repo) -> Repo:
    repo.onnx("m", {1: 2.0})
    return repo


def test_https_serves_inference_to_real_tls_clients(tls_servers: Any, models: Repo, tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    issued = ca.issue("pyserve-one", server=True, stem="server")
    server = tls_servers([models.root, "--tls-cert", issued.cert, "--tls-key", issued.key], tmp_path / "logs", ca)
    assert requests.get(server.url + "/v2/models/m", verify=str(ca.path), timeout=10).json()["name"] == "m"
    with InferenceClient(server.url, ssl_context=tls_context(ca.path)) as client:
        out = client.infer("m", {"x": np.ones((1, 4), np.float32)})
    np.testing.assert_allclose(out["y"], run_onnx(models.root / "m" / "1" / "model.onnx", np.ones((1, 4), np.float32))["y"])
    # The stock Triton client, over HTTPS.
    tritonclient = pytest.importorskip("tritonclient.http")
    triton = tritonclient.InferenceServerClient(
        server.url.removeprefix("https://"), ssl=True,
        ssl_context_factory=lambda: ssl.create_default_context(cafile=str(ca.path)))
    assert triton.is_model_ready("m")
    triton.close()
    # A client that does not trust the CA is refused by its own check; plain HTTP gets no answer.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.url + "/v2/health/live", timeout=10)
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{server.port}/v2/health/live", timeout=10)
    assert "Running on https://127.0.0.1" in server.log()


def test_mutual_tls_refuses_a_client_without_a_certificate(tls_servers: Any, models: Repo, tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    clients_ca = CA(tmp_path / "clients", "client CA")
    issued = ca.issue("pyserve-one", server=True, stem="server")
    good = clients_ca.issue("trainer", server=False, stem="trainer")
    stranger = CA(tmp_path / "other", "other CA").issue("stranger", server=False, stem="stranger")
    server = tls_servers([models.root, "--tls-cert", issued.cert, "--tls-key", issued.key,
                          "--tls-client-ca", clients_ca.path], tmp_path / "logs", ca, client=good)
    r = requests.get(server.url + "/v2/models/m", verify=str(ca.path), cert=(str(good.cert), str(good.key)), timeout=10)
    assert r.status_code == 200
    for cert in (None, (str(stranger.cert), str(stranger.key))):
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(server.url + "/v2/models/m", verify=str(ca.path), cert=cert, timeout=10)
    with InferenceClient(server.url, ssl_context=tls_context(ca.path, good.cert, good.key)) as client:
        assert client.is_ready()
    with InferenceClient(server.url, ssl_context=tls_context(ca.path)) as client, \
            pytest.raises(InferenceServerError, match="cannot reach"):
        client.is_ready()


def test_optional_client_certificates(tls_servers: Any, models: Repo, tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    issued = ca.issue("pyserve-one", server=True, stem="server")
    stranger = CA(tmp_path / "other", "other CA").issue("stranger", server=False, stem="stranger")
    server = tls_servers([models.root, "--tls-cert", issued.cert, "--tls-key", issued.key,
                          "--tls-client-ca", ca.path, "--tls-client-auth", "optional"], tmp_path / "logs", ca)
    assert requests.get(server.url + "/v2/health/live", verify=str(ca.path), timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):  # a certificate the CA did not sign
        requests.get(server.url + "/v2/health/live", verify=str(ca.path), cert=(str(stranger.cert), str(stranger.key)),
                     timeout=10)


def test_the_audit_log_names_the_client_certificate(tls_servers: Any, models: Repo, tmp_path: Path) -> None:
    """Under mTLS each management call's audit record carries the subject (RFC 4514, escaped) and the
    SHA-256 fingerprint of the certificate its connection presented; null for a call without one."""
    import hashlib

    from pyserve.security import read_audit

    ca = CA(tmp_path / "pki")
    issued = ca.issue("pyserve-one", server=True, stem="server")
    ops = ca.issue("ops, laptop", server=False, stem="ops")
    server = tls_servers([models.root, "--tls-cert", issued.cert, "--tls-key", issued.key,
                          "--tls-client-ca", ca.path, "--tls-client-auth", "optional"], tmp_path / "logs", ca)
    r = requests.post(server.url + "/v2/repository/models/m/load", verify=str(ca.path),
                      cert=(str(ops.cert), str(ops.key)), timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(server.url + "/v2/repository/models/nope/unload", verify=str(ca.path), timeout=30)
    assert r.status_code == 404, r.text
    path = models.root / ".pyserve" / "audit.jsonl"
    wait_until(lambda: len(read_audit(path)) >= 2, what="2 audit records")
    with_cert, without = read_audit(path)
    der = x509.load_pem_x509_certificate(ops.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert (with_cert["action"], with_cert["result"]) == ("load", "ok")
    assert with_cert["client_cert_subject"] == "CN=ops\\, laptop"
    assert with_cert["client_cert_sha256"] == hashlib.sha256(der).hexdigest()
    assert (without["action"], without["result"]) == ("unload", "NOT_FOUND")
    assert without["client_cert_subject"] is None and without["client_cert_sha256"] is None


@pytest.mark.parametrize("how", ["file change", "SIGHUP"])
def test_a_new_certificate_is_served_without_a_restart(tls_servers: Any, models: Repo, tmp_path: Path,
                                                       how: str) -> None:
    ca = CA(tmp_path / "pki")
    first = ca.issue("pyserve-one", server=True, stem="one")
    cert, key = tmp_path / "live" / "tls.crt", tmp_path / "live" / "tls.key"
    cert.parent.mkdir()
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    server = tls_servers([models.root, "--tls-cert", cert, "--tls-key", key], tmp_path / "logs", ca)
    session = requests.Session()  # a connection kept alive across the reload keeps working
    assert session.get(server.url + "/v2/health/live", verify=str(ca.path), timeout=10).status_code == 200
    assert served_common_name(server.port, ca) == "pyserve-one"
    second = ca.issue("pyserve-two", server=True, stem="two")
    if how == "SIGHUP":
        # Written in place with the old files' times restored: the watcher cannot see the change.
        st = cert.stat(), key.stat()
        cert.write_bytes(second.cert.read_bytes())
        key.write_bytes(second.key.read_bytes())
        for path, old in zip((cert, key), st):
            os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
        server.signal(signal.SIGHUP)
    else:
        for src, dst in ((second.key, key), (second.cert, cert)):  # renamed over, as Kubernetes does
            staged = dst.with_suffix(".new")
            staged.write_bytes(src.read_bytes())
            os.replace(staged, dst)
    wait_until(lambda: served_common_name(server.port, ca) == "pyserve-two", timeout_s=30,
               what="the new certificate to be served")
    assert session.get(server.url + "/v2/health/live", verify=str(ca.path), timeout=10).status_code == 200
    assert server.proc.poll() is None
    assert "TLS certificate reloaded" in server.log()
