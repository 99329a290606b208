"""Model control with no protocol in it: the repository index, load and unload, aliases and traffic
policies.

Every transport's model-control endpoints (HTTP's ``/v2/repository/...``; gRPC's RepositoryModelLoad
when it exists) call these, so the rules are the same everywhere: names are checked before anything
is read (:func:`~pyserve.repository.check_model_name`), a load or unload completes even when its caller
goes away, and a caller's mistake (an unknown or impossible name) is logged at INFO, the server's
trouble (a config that does not load) at ERROR. Changes of aliases and traffic policies are checked,
persisted and audited by :class:`~pyserve.release.TrafficPolicies`; ``who`` is the caller (for HTTP,
the client's address) and ``reason`` what the caller said, both written to the audit log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pyserve.errors import ErrorKind, PyserveError, invalid, not_found, unavailable
from pyserve.release import EMPTY, TrafficPolicy, check_alias_name
from pyserve.repository import check_model_name, version_number

if TYPE_CHECKING:
    from pyserve.release.rollout import RolloutController
    from pyserve.service.host import ModelHost

log = logging.getLogger("pyserve.service")

MAX_REASON = 1000  # characters of a change's reason kept in the audit log


class ModelControl:
    """Load, unload and list the models of a :class:`~pyserve.service.host.ModelHost`; run their
    rollouts through ``rollouts`` (None: rollout calls answer UNAVAILABLE)."""

    def __init__(self, host: ModelHost, rollouts: RolloutController | None = None) -> None:
        self.host = host
        self.rollouts = rollouts

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index rows (``name``, ``version``, ``state``, ``reason``), with
        ``aliases`` (sorted) on the row of each version that aliases name."""
        rows = self.host.repository.index()
        if ready_only:
            rows = [r for r in rows if r["state"] == "READY"]
        for row in rows:
            if "version" in row:
                policy = self.host.traffic.policy_or_none(row["name"])
                aliases = policy.aliases_of(int(row["version"])) if policy is not None else []
                if aliases:
                    row["aliases"] = aliases
        return rows

    async def load(self, name: str, config_override: Mapping[str, Any] | None = None) -> None:
        """(Re)loads model ``name``, with ``config_override`` in place of its config.toml when given.

        Raises INVALID_ARGUMENT (a name that cannot be a model, a config that is refused), NOT_FOUND
        (no such model). Shielded: a caller that is cancelled does not leave a model half loaded."""
        try:
            await asyncio.shield(self.host.repository.load(name, config_override))
        except PyserveError as e:
            # A refused override is the caller's mistake; a config.toml that does not load, the server's.
            mistake = config_override is not None or self._callers_mistake(name, e)
            level = logging.INFO if mistake else logging.ERROR
            log.log(level, "load of model %r refused: %s", name, e.message)
            raise

    async def unload(self, name: str) -> None:
        """Stops serving ``name`` once the requests it accepted are answered (shielded like load).

        INVALID_ARGUMENT for a name that cannot be a model, NOT_FOUND for an unknown one."""
        try:
            await asyncio.shield(self.host.repository.unload(name))
        except PyserveError as e:
            log.info("unload of model %r refused: %s", name, e.message)
            raise

    async def load_version(self, name: str, version: str) -> None:
        """(Re)loads one version of ``name`` (a number, or an alias naming one); the model's other
        versions keep serving, untouched.

        INVALID_ARGUMENT for a name or version that cannot be one, or a version that fails to load
        (nothing changes then); NOT_FOUND for an unknown model, version folder or alias. Shielded."""
        number = self._version(name, version)
        await asyncio.shield(self.host.repository.load_version(name, number))

    async def unload_version(self, name: str, version: str) -> None:
        """Stops serving one version of ``name`` once its accepted requests are answered; the other
        versions keep serving. NOT_FOUND for a version that is not loaded; INVALID_ARGUMENT for a
        version that the traffic policy sends traffic to (an alias names it, or a weight): move
        them first. Shielded."""
        number = self._version(name, version)
        try:
            await asyncio.shield(self._unload_version(name, number))
        except PyserveError as e:
            log.info("unload of model %r version %s refused: %s", name, version, e.message)
            raise

    async def _unload_version(self, name: str, version: int) -> None:
        # Under the policy's change lock: no alias can move onto the version while it goes.
        async with self.host.traffic.changing(name) as policy:
            aliases = policy.aliases_of(version)
            if aliases:
                raise invalid(f"model '{name}' version {version} is named by alias(es) "
                              f"{', '.join(map(repr, aliases))}: move or remove them first")
            if policy.shadow is not None and policy.resolve(policy.shadow.target) == version:
                raise invalid(f"model '{name}' version {version} is the shadow target: change the traffic "
                              "policy first")
            weighted = [t for t, w in policy.weights.items() if w > 0 and policy.resolve(t) == version]
            if weighted:
                raise invalid(f"model '{name}' version {version} takes traffic: weights."
                              f"{weighted[0]} is {policy.weights[weighted[0]]:g}%; change the traffic "
                              "policy first")
            await self.host.repository.unload_version(name, version)

    def _version(self, name: str, version: str) -> int:
        """The version number that ``version`` (a number or an alias) names."""
        check_model_name(name)
        number = version_number(version)
        if number is not None:
            return number
        policy = self.host.traffic.policy_or_none(name)
        if policy is not None and version in policy.aliases:
            return policy.resolve(version)
        raise invalid(f"model '{name}' version {version[:80]!r}: expected a version number (1, 2, ...) "
                      "or an alias")

    # -- aliases and traffic policy ----------------------------------------------------------
    def traffic(self, name: str) -> dict:
        """Model ``name``'s traffic policy document (``aliases``, ``weights``, ``routing_header``)."""
        return self.host.traffic.document(name)

    async def set_alias(self, name: str, alias: str, target: str, who: str, reason: str = "") -> dict:
        """Sets or moves ``alias`` of model ``name`` to ``target`` (a loaded version's number, or
        another alias), atomically: each request resolves the alias once, to the old version or the
        new one. Returns the new policy document. INVALID_ARGUMENT for a bad alias name, a version
        that is not loaded, a loop, or a version whose golden samples fail; nothing changes then."""
        check_alias_name(alias)
        if type(target) is int and not isinstance(target, bool):
            target = str(target)
        if type(target) is not str or not target:
            raise invalid(f"alias {alias!r}: 'version' must be a version number or an alias, got {target!r}")

        def edit(old: TrafficPolicy) -> TrafficPolicy:
            doc = old.to_doc()
            doc["aliases"] = {**doc["aliases"], alias: target}
            return TrafficPolicy.from_doc(doc)

        action = "move_alias" if alias in (self.host.traffic.policy_or_none(name) or EMPTY).aliases else "set_alias"
        return (await self._change(name, edit, action, who, reason)).to_doc()

    async def remove_alias(self, name: str, alias: str, who: str, reason: str = "") -> dict:
        """Removes ``alias`` of model ``name``; NOT_FOUND when it has no such alias, INVALID_ARGUMENT
        when another alias or a weight still names it. Returns the new policy document."""
        check_alias_name(alias)

        def edit(old: TrafficPolicy) -> TrafficPolicy:
            if alias not in old.aliases:
                aliases = ", ".join(sorted(old.aliases)) or "none"
                raise not_found(f"model '{name}' has no alias {alias!r} (aliases: {aliases})")
            users = [f"aliases.{a}" for a, t in old.aliases.items() if t == alias]
            users += [f"weights.{t}" for t in old.weights if t == alias]
            if old.shadow is not None and old.shadow.target == alias:
                users.append("shadow.target")
            if users:
                raise invalid(f"model '{name}' alias {alias!r} is named by {', '.join(users)}: "
                              "change them first")
            doc = old.to_doc()
            doc["aliases"] = {a: t for a, t in doc["aliases"].items() if a != alias}
            return TrafficPolicy.from_doc(doc)

        return (await self._change(name, edit, "remove_alias", who, reason)).to_doc()

    async def set_traffic(self, name: str, doc: Any, who: str, reason: str = "") -> dict:
        """Replaces model ``name``'s traffic policy with ``doc`` (checked: INVALID_ARGUMENT naming the
        field, and nothing changes). Returns the new policy document."""
        policy = TrafficPolicy.from_doc(doc)
        return (await self._change(name, lambda old: policy, "set_policy", who, reason)).to_doc()

    async def _change(self, name: str, edit: Any, action: str, who: str, reason: str) -> TrafficPolicy:
        check_model_name(name)
        self._check_reason(reason)
        try:
            return await asyncio.shield(self.host.traffic.change(name, edit, action=action, who=who, reason=reason))
        except PyserveError as e:
            log.info("traffic change %s of model %r refused: %s", action, name, e.message)
            raise

    # -- rollouts ----------------------------------------------------------------------------
    def rollout(self, name: str) -> dict:
        """The state of model ``name``'s rollout (spec, phase, step, weights, gates, history);
        NOT_FOUND when it has none."""
        check_model_name(name)
        return self._rollouts().state(name)

    async def start_rollout(self, name: str, doc: Any, who: str, reason: str = "") -> dict:
        """Starts a rollout of ``name`` (``doc``: the spec, see :mod:`pyserve.release.rollout`); returns
        its state. INVALID_ARGUMENT naming the field, and nothing changes, for a bad spec."""
        check_model_name(name)
        self._check_reason(reason)
        try:
            return await asyncio.shield(self._rollouts().start(name, doc, who, reason))
        except PyserveError as e:
            log.info("rollout of model %r refused: %s", name, e.message)
            raise

    async def rollout_action(self, name: str, action: str, who: str, reason: str = "", full: bool = False) -> dict:
        """``pause``, ``resume``, ``promote`` (``full``: to 100% at once) or ``abort`` model ``name``'s
        rollout; returns its state. INVALID_ARGUMENT for another action or a rollout not in a phase
        the action applies to."""
        check_model_name(name)
        self._check_reason(reason)
        rollouts = self._rollouts()
        if action == "promote":
            call = rollouts.promote(name, who, reason, full)
        elif action in ("pause", "resume", "abort"):
            call = getattr(rollouts, action)(name, who, reason)
        else:
            raise invalid(f"rollout action {action[:40]!r}: expected pause, resume, promote or abort")
        try:
            return await asyncio.shield(call)
        except PyserveError as e:
            log.info("rollout %s of model %r refused: %s", action, name, e.message)
            raise

    def _rollouts(self) -> RolloutController:
        if self.rollouts is None:
            raise unavailable("rollouts are not run by this server")
        return self.rollouts

    @staticmethod
    def _check_reason(reason: Any) -> None:
        if type(reason) is not str or len(reason) > MAX_REASON:
            raise invalid(f"reason: expected a string of at most {MAX_REASON} characters")

    @staticmethod
    def _callers_mistake(name: str, error: PyserveError) -> bool:
        if error.kind is ErrorKind.NOT_FOUND:
            return True
        try:
            check_model_name(name)
        except PyserveError:
            return True
        return False
