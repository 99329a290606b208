"""A model's traffic policy: aliases, a weighted split between versions, the routing key's header.

The policy is a small document, the same on the wire (``GET/PUT /v2/repository/models/{m}/traffic``)
and in its file (``MODEL/traffic.json``)::

    {"aliases": {"stable": "1", "canary": "2"},
     "weights": {"stable": 90, "canary": 10},
     "routing_header": "x-user-id"}

- ``aliases``: alias name -> target, a version number (``"2"``) or another alias (no loops). An alias
  name follows the model-name rules and is not a number.
- ``weights``: target -> percent of the requests that name no version. Percentages, from 0 to 100,
  summing to 100. Empty: such requests go to the newest version, as without a policy.
- ``routing_header``: the request header whose value is the routing key (sticky routing); the
  request id when absent, else a random key.

:meth:`TrafficPolicy.pick` maps a routing key to a target: the key's BLAKE2b-64 hash (RFC 7693,
Python's :mod:`hashlib`) as a point in [0, 1), placed on the cumulative weights in the order the
policy lists them. The same key reaches the same target while the weights stay; moving weight from
the first target to the last only moves keys onto the last one.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pyserve.errors import PyserveError, invalid, not_found
from pyserve.repository import check_model_name, version_number

FIELDS = ("aliases", "weights", "routing_header", "shadow")
SHADOW_FIELDS = ("target", "percent", "max_in_flight")
DEFAULT_SHADOW_IN_FLIGHT = 64
MAX_SHADOW_IN_FLIGHT = 10_000  # a bound that bounds: the mirrored requests each hold their inputs
MAX_HEADER_NAME = 256
TOTAL_PERCENT = 100.0
# Weights are sums of decimal percentages written by people: 33.3 + 33.3 + 33.4 is not exactly 100.
SUM_TOLERANCE = 1e-6
# A policy names a model's few versions: a bound keeps a hostile document from costing the server
# (following an alias chain is linear in its length; the request path resolves aliases per call).
MAX_ENTRIES = 100
# RFC 9110's token: the characters of a header field name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HASH_SCALE = 1.0 / 2.0**64


def key_point(key: str) -> float:
    """The point in [0, 1) of a routing key: its BLAKE2b hash with an 8-byte digest, as an unsigned
    big-endian integer over 2**64 (stable across processes and machines, unlike Python's hash())."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") * _HASH_SCALE


def check_alias_name(alias: str) -> str:
    """``alias`` if it can name an alias (the model-name rules, and not a version number);
    INVALID_ARGUMENT naming the rule otherwise."""
    try:
        check_model_name(alias)
    except PyserveError as e:
        raise invalid("alias" + e.message.removeprefix("model name")) from None
    if alias.isdigit():
        raise invalid(f"alias {alias!r}: a number names a version, not an alias")
    return alias


@dataclass(frozen=True)
class Shadow:
    """Mirror ``percent`` of the requests served by other versions to ``target`` (a version or an
    alias), at most ``max_in_flight`` mirrored requests at a time (more are dropped and counted)."""

    target: str
    percent: float = 100.0
    max_in_flight: int = DEFAULT_SHADOW_IN_FLIGHT

    @classmethod
    def from_doc(cls, doc: Any, where: str) -> Shadow:
        """The shadow of a policy document; INVALID_ARGUMENT naming the field."""
        check_object(doc, SHADOW_FIELDS, where)
        target = doc.get("target")
        if type(target) is int and not isinstance(target, bool):
            target = str(target)
        if type(target) is not str or not target:
            raise invalid(f"{where}.target: expected a version number or an alias, got {target!r}")
        target = _canonical(target)
        percent = doc.get("percent", 100)
        if type(percent) not in (int, float) or not math.isfinite(percent) or not 0 <= percent <= TOTAL_PERCENT:
            raise invalid(f"{where}.percent: expected a percentage from 0 to 100, got {percent!r}")
        in_flight = doc.get("max_in_flight", DEFAULT_SHADOW_IN_FLIGHT)
        if type(in_flight) is not int or in_flight < 1:
            raise invalid(f"{where}.max_in_flight: expected an integer >= 1, got {in_flight!r}")
        if in_flight > MAX_SHADOW_IN_FLIGHT:
            raise invalid(f"{where}.max_in_flight: at most {MAX_SHADOW_IN_FLIGHT}, got {in_flight}")
        return cls(target, float(percent), in_flight)

    def to_doc(self) -> dict[str, Any]:
        """The JSON form (what :meth:`from_doc` reads)."""
        percent = int(self.percent) if self.percent.is_integer() else self.percent
        return {"target": self.target, "percent": percent, "max_in_flight": self.max_in_flight}


@dataclass(frozen=True)
class TrafficPolicy:
    """A model's aliases, weights (percent per target, in order), routing header (lower case) and
    shadow (a candidate version that a share of the requests is mirrored to)."""

    aliases: Mapping[str, str] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    routing_header: str | None = None
    shadow: Shadow | None = None

    def __post_init__(self) -> None:
        for name in ("aliases", "weights"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        # The cumulative split, computed once: (upper bound, target) with the zero weights left out.
        bounds: list[tuple[float, str]] = []
        running = 0.0
        for target, weight in self.weights.items():
            if weight > 0:
                running += weight / TOTAL_PERCENT
                bounds.append((running, target))
        object.__setattr__(self, "_bounds", tuple(bounds))

    @property
    def empty(self) -> bool:
        """No alias, no weight, no header, no shadow: the same as no policy."""
        return not self.aliases and not self.weights and self.routing_header is None and self.shadow is None

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def from_doc(cls, doc: Any, where: str = "policy") -> TrafficPolicy:
        """The policy of a JSON document; INVALID_ARGUMENT naming the field (``where.weights.2``) and
        what was expected. Checks the document alone: :meth:`check` checks it against the versions."""
        check_object(doc, FIELDS, where)
        aliases = doc.get("aliases", {})
        if type(aliases) is not dict:
            raise invalid(f"{where}.aliases: expected an object (alias -> version or alias), got {_kind(aliases)}")
        if len(aliases) > MAX_ENTRIES:
            raise invalid(f"{where}.aliases: at most {MAX_ENTRIES} aliases, got {len(aliases)}")
        aliases = dict(aliases)  # the caller's document is left as it was
        for alias, target in aliases.items():
            try:
                check_alias_name(alias)
            except PyserveError as e:
                raise invalid(f"{where}.aliases: {e.message}") from None
            if type(target) is int and not isinstance(target, bool):
                target = str(target)
            if type(target) is not str or not target:
                raise invalid(f"{where}.aliases.{alias}: expected a version number or an alias, got {target!r}")
            aliases[alias] = _canonical(target)
        weights = doc.get("weights", {})
        if type(weights) is not dict:
            raise invalid(f"{where}.weights: expected an object (version or alias -> percent), got {_kind(weights)}")
        if len(weights) > MAX_ENTRIES:
            raise invalid(f"{where}.weights: at most {MAX_ENTRIES} targets, got {len(weights)}")
        given, weights = weights, {}
        for target, weight in given.items():
            if type(weight) not in (int, float) or not math.isfinite(weight) or not 0 <= weight <= TOTAL_PERCENT:
                raise invalid(f"{where}.weights.{target}: expected a percentage from 0 to 100, got {weight!r}")
            name = _canonical(target)  # "01" is version 1: one entry per version number
            if name in weights:
                raise invalid(f"{where}.weights.{target}: version {name} is given twice")
            weights[name] = float(weight)
        if weights:
            total = sum(weights.values())
            if abs(total - TOTAL_PERCENT) > SUM_TOLERANCE:
                raise invalid(f"{where}.weights: the percentages must sum to 100, got {total:g}")
        header = doc.get("routing_header")
        if header is not None:
            if type(header) is not str or not _TOKEN.match(header):
                raise invalid(f"{where}.routing_header: expected an HTTP header name, got {header!r}")
            if len(header) > MAX_HEADER_NAME:
                raise invalid(f"{where}.routing_header: at most {MAX_HEADER_NAME} characters, "
                              f"got {len(header)}")
            header = header.lower()
        shadow = doc.get("shadow")
        if shadow is not None:
            shadow = Shadow.from_doc(shadow, f"{where}.shadow")
        policy = cls(aliases, weights, header, shadow)
        for alias in aliases:
            policy._follow(alias, where)  # loops and unknown aliases
        for target in weights:
            try:
                policy._follow(target, where)
            except PyserveError as e:
                raise invalid(f"{where}.weights.{target}: {e.message}") from None
        if shadow is not None:
            try:
                policy._follow(shadow.target, where)
            except PyserveError as e:
                raise invalid(f"{where}.shadow.target: {e.message}") from None
        return policy

    def to_doc(self) -> dict[str, Any]:
        """The JSON document of the policy (what :meth:`from_doc` reads); whole numbers as integers."""
        doc: dict[str, Any] = {
            "aliases": dict(self.aliases),
            "weights": {t: int(w) if w.is_integer() else w for t, w in self.weights.items()},
        }
        if self.routing_header is not None:
            doc["routing_header"] = self.routing_header
        if self.shadow is not None:
            doc["shadow"] = self.shadow.to_doc()
        return doc

    def check(self, model: str, loaded: set[int], where: str = "policy") -> None:
        """INVALID_ARGUMENT when an alias or a weight names a version that is not loaded."""
        served = ", ".join(map(str, sorted(loaded))) or "none"
        for alias in self.aliases:
            version = self.resolve(alias)
            if version not in loaded:
                raise invalid(f"{where}.aliases.{alias}: model '{model}' version {version} is not loaded "
                              f"(loaded: {served}); load it first")
        for target, weight in self.weights.items():
            version = self.resolve(target)
            if weight > 0 and version not in loaded:
                raise invalid(f"{where}.weights.{target}: model '{model}' version {version} is not loaded "
                              f"(loaded: {served}); load it first")
        if self.shadow is not None:
            version = self.resolve(self.shadow.target)
            if version not in loaded:
                raise invalid(f"{where}.shadow.target: model '{model}' version {version} is not loaded "
                              f"(loaded: {served}); load it first")
            # Requests the candidate serves itself are not mirrored: as the primary it would see none.
            share = sum(w for t, w in self.weights.items() if self.resolve(t) == version)
            primary = abs(share - TOTAL_PERCENT) <= SUM_TOLERANCE if self.weights else version == max(loaded)
            if primary and self.shadow.percent > 0:
                raise invalid(f"{where}.shadow.target: version {version} serves every request that names no "
                              "version (the primary): a shadow mirrors to a candidate that other versions "
                              "serve beside")

    # -- routing -----------------------------------------------------------------------------
    def resolve(self, target: str) -> int:
        """The version a target names (a version number, or an alias followed to one); NOT_FOUND
        for a name that is neither."""
        return self._follow(target, "policy")

    def _follow(self, target: str, where: str) -> int:
        seen: dict[str, None] = {}  # ordered, and a constant-time membership test
        while True:
            number = version_number(target)
            if number is not None:
                return number
            if target in seen:
                raise invalid(f"{where}.aliases: alias loop {' -> '.join([*seen, target])}")
            next_target = self.aliases.get(target)
            if next_target is None:
                if seen:
                    raise invalid(f"{where}.aliases.{next(reversed(seen))}: {target!r} is neither a version "
                                  "number nor an alias")
                raise not_found(f"{target[:80]!r} is neither a version number nor an alias")
            seen[target] = None
            target = next_target

    def pick(self, key: str | None) -> int | None:
        """The version that serves a request with routing key ``key`` (a random key when None); None
        when the policy has no weights (the newest version serves)."""
        bounds = self._bounds  # type: ignore[attr-defined]
        if not bounds:
            return None
        point = key_point(key) if key is not None else random.random()
        for upper, target in bounds:
            if point < upper:
                return self.resolve(target)
        return self.resolve(bounds[-1][1])  # the sum's rounding may leave the top sliver uncovered

    def versions_in_traffic(self) -> set[int]:
        """The versions an alias names or a positive weight routes to."""
        out = {self.resolve(a) for a in self.aliases}
        out |= {self.resolve(t) for t, w in self.weights.items() if w > 0}
        if self.shadow is not None and self.shadow.percent > 0:
            out.add(self.resolve(self.shadow.target))
        return out

    def aliases_of(self, version: int) -> list[str]:
        """The aliases naming ``version``, sorted."""
        return sorted(a for a in self.aliases if self.resolve(a) == version)


EMPTY = TrafficPolicy()


def _canonical(target: str) -> str:
    """A version number written the one way it is shown ("01" -> "1"); an alias as it is."""
    number = version_number(target)
    return str(number) if number is not None else target


def check_object(doc: Any, fields: Iterable[str], where: str, note: str = "") -> None:
    """INVALID_ARGUMENT naming ``where`` unless ``doc`` is a JSON object whose keys are among
    ``fields`` (``note`` is added to the list of expected fields, e.g. what null means)."""
    expected = ", ".join(fields) + (f" ({note})" if note else "")
    if type(doc) is not dict:
        raise invalid(f"{where}: expected a JSON object with {expected}, got {_kind(doc)}")
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        raise invalid(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; expected {expected}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")
