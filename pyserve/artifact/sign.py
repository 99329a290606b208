"""Ed25519 signatures of an artifact's manifest (RFC 8032, through the ``cryptography`` library).

The signature member holds the 64-byte signature of the manifest's bytes, base64-encoded (RFC 4648)
on one line. Keys are PEM files, as ``openssl genpkey -algorithm ed25519`` writes them (PKCS#8
private key; ``openssl pkey -pubout`` gives the SubjectPublicKeyInfo public key).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import TYPE_CHECKING

from pyserve.artifact.manifest import MANIFEST, SIGNATURE
from pyserve.errors import PyserveError, invalid

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def _serialization():  # type: ignore[no-untyped-def]
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError as e:
        raise invalid("signing and checking signatures need the cryptography package: "
                      "pip install 'pyserve[artifact]'") from e
    return serialization


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key of the PEM file ``path`` (unencrypted PKCS#8); INVALID_ARGUMENT naming
    the file when it is not one."""
    _serialization()  # a clear refusal without the cryptography package
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = _load(path, private=True)
    if not isinstance(key, Ed25519PrivateKey):
        raise invalid(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key of the PEM file ``path`` (a private key's file is accepted too: its
    public half is used); INVALID_ARGUMENT naming the file when it is neither."""
    _serialization()  # a clear refusal without the cryptography package
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    try:
        key = _load(path, private=False)
    except PyserveError:
        key = _load(path, private=True)
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise invalid(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def _load(path: Path, private: bool):  # type: ignore[no-untyped-def]
    serialization = _serialization()
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise invalid(f"{path}: cannot read the key: {e.strerror or e}") from None
    try:
        if private:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        kind = "private" if private else "public"
        raise invalid(f"{path}: not a PEM {kind} key (unencrypted): {e}") from None


def sign(manifest: bytes, key: Ed25519PrivateKey) -> bytes:
    """The signature member's bytes: base64 of the Ed25519 signature of ``manifest``, and a newline."""
    return base64.b64encode(key.sign(manifest)) + b"\n"


SIGNATURE_BYTES = 64  # an Ed25519 signature (RFC 8032)


def decode(signature: bytes) -> bytes:
    """The raw signature of the signature member's bytes; INVALID_ARGUMENT naming the member when it
    is not the base64 of 64 bytes (checked whether or not a key is configured)."""
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{SIGNATURE}: not a base64 signature") from None
    if len(raw) != SIGNATURE_BYTES:
        raise invalid(f"{SIGNATURE}: {len(raw)} bytes, an Ed25519 signature has {SIGNATURE_BYTES}")
    return raw


def check(manifest: bytes, signature: bytes, key: Ed25519PublicKey) -> None:
    """Returns when ``signature`` (64 raw bytes, as :func:`decode` gives them) is ``key``'s signature
    of ``manifest``; INVALID_ARGUMENT naming the manifest otherwise."""
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        raise invalid(f"{MANIFEST}: the signature ({SIGNATURE}) does not match this manifest and key: "
                      "the manifest was changed or signed with another key") from None


def key_id(key: Ed25519PublicKey) -> str:
    """A short name of a public key for messages: ``ed25519:`` and the first 16 hex digits of the
    sha256 of its raw 32 bytes."""
    import hashlib

    serialization = _serialization()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]
