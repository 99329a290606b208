"""Bearer tokens: read from a file or an environment variable, compared in constant time.

A token source is text with one token per line (the environment variable may also separate them
with commas), each ``TOKEN`` or ``ID:TOKEN``. The id names the token in the audit log and the
server's log, so a leaked or retired token can be traced without ever writing the token itself.
Blank lines and lines starting with ``#`` are skipped. A token is 16 characters or more of RFC 6750's
``b64token`` alphabet (letters, digits, ``-._~+/``, then ``=`` padding): what a client can put in an
``Authorization: Bearer`` header unchanged, e.g. ``openssl rand -base64 32`` or ``python -c "import
secrets; print(secrets.token_urlsafe(32))"``.

Comparison follows the usual rule for secrets (Python's :func:`hmac.compare_digest`): the presented
token's SHA-256 digest is compared with the digest of every configured token, all of them, each
comparison in constant time, so neither the position of a match, nor how much of a token matched,
nor a token's length shows in the time a refusal takes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from pyserve.errors import invalid

MIN_TOKEN_CHARS = 16
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")  # RFC 6750 section 2.1, b64token
_TOKEN_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class TokenSet:
    """The tokens a server accepts: ``(token id, SHA-256 digest of the token, whether it may control
    models)`` triples (the tokens themselves are not kept). Immutable: a reload builds a new set and
    swaps it in."""

    entries: tuple[tuple[str, bytes, bool], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        """The token ids, in the order of their sources."""
        return [token_id for token_id, _, _ in self.entries]

    @property
    def control(self) -> bool:
        """Whether some token may control models."""
        return any(control for _, _, control in self.entries)

    def match(self, presented: str) -> tuple[str, bool] | None:
        """``(id, may control models)`` of the configured token equal to ``presented``, or None.

        Every configured token is compared (no early exit), each with :func:`hmac.compare_digest`
        over SHA-256 digests of equal length."""
        digest = _digest(presented)
        found: tuple[str, bool] | None = None
        for token_id, expected, control in self.entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = (token_id, control)
        return found

    @staticmethod
    def of(*groups: tuple[list[tuple[str, str]], bool]) -> TokenSet:
        """A set from groups of ``(id, token)`` pairs (e.g. :func:`parse_tokens`' results), each with
        whether its tokens may control models; INVALID_ARGUMENT when two tokens share an id."""
        entries: list[tuple[str, bytes, bool]] = []
        seen: set[str] = set()
        for pairs, control in groups:
            for token_id, token in pairs:
                if token_id in seen:
                    raise invalid(f"token id {token_id!r} is given twice: each token needs its own id")
                seen.add(token_id)
                entries.append((token_id, _digest(token), control))
        return TokenSet(tuple(entries))


def parse_tokens(text: str, source: str, default_prefix: str, commas: bool = False) -> list[tuple[str, str]]:
    """The ``(id, token)`` pairs of ``text`` (one token per line, ``TOKEN`` or ``ID:TOKEN``; with
    ``commas``, commas separate tokens too). A token without an id is named ``{default_prefix}-{n}``
    (n counts the tokens of the source from 1).

    Raises INVALID_ARGUMENT naming ``source`` and the line (never the token) for a token that is too
    short or has characters a bearer token cannot have, or an id that is not ``[A-Za-z0-9_.-]``."""
    pairs: list[tuple[str, str]] = []
    lines = text.removeprefix("\ufeff").splitlines()
    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        for item in (stripped.split(",") if commas else [stripped]):
            item = item.strip()
            if not item:
                continue
            where = f"{source}, line {lineno}"
            token_id, sep, token = item.partition(":")
            if not sep:
                token_id, token = f"{default_prefix}-{len(pairs) + 1}", item
            elif not _TOKEN_ID.match(token_id):
                raise invalid(f"{where}: a token id (before ':') must be 1 to 64 letters, digits, '_', '.' "
                              "or '-'")
            token = token.strip()
            if len(token) < MIN_TOKEN_CHARS or not _TOKEN.match(token):
                raise invalid(f"{where}: a token must be at least {MIN_TOKEN_CHARS} characters of letters, "
                              "digits and -._~+/ (then = padding), e.g. the output of "
                              "`openssl rand -base64 32`")
            pairs.append((token_id.strip(), token))
    return pairs


def read_token_file(path: Path, default_prefix: str = "file") -> list[tuple[str, str]]:
    """The tokens of a token file (ids default to ``{default_prefix}-N``); INVALID_ARGUMENT when it
    cannot be read, holds no token, or holds a malformed one."""
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise invalid(f"token file {path}: cannot read it: {why}") from None
    pairs = parse_tokens(text, f"token file {path}", default_prefix)
    if not pairs:
        raise invalid(f"token file {path}: no token in it (one token per line, TOKEN or ID:TOKEN)")
    return pairs


@dataclass(frozen=True)
class TokenSource:
    """Where tokens come from: a file (re-read on reload), the value of an environment variable, or
    both; ``control``: whether its tokens may control models (else inference and metrics only);
    ``prefix``: the ids of its tokens without one are ``{prefix}-file-N`` / ``{prefix}-env-N``."""

    path: Path | None
    env_text: str | None
    env_name: str
    control: bool
    prefix: str = ""


def load_tokens(*sources: TokenSource) -> TokenSet:
    """The tokens of ``sources`` (a token without an id is named ``[prefix-]file-N`` or
    ``[prefix-]env-N``). Raises INVALID_ARGUMENT as :func:`parse_tokens` and :func:`read_token_file`
    do, and when two tokens share an id."""
    groups = []
    for src in sources:
        prefix = f"{src.prefix}-" if src.prefix else ""
        if src.path is not None:
            groups.append((read_token_file(src.path, f"{prefix}file"), src.control))
        if src.env_text is not None:
            pairs = parse_tokens(src.env_text, f"${src.env_name}", f"{prefix}env", commas=True)
            if not pairs:
                raise invalid(f"${src.env_name} is set but holds no token (unset it, or give TOKEN or ID:TOKEN, "
                              "comma-separated)")
            groups.append((pairs, src.control))
    return TokenSet.of(*groups)


__all__ = ["MIN_TOKEN_CHARS", "TokenSet", "TokenSource", "load_tokens", "parse_tokens", "read_token_file"]
