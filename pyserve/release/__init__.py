"""Safe releases: what decides which version of a model serves a request, and how that changes.

- :mod:`~pyserve.release.policy`: :class:`TrafficPolicy`, a model's aliases (``stable`` -> 1), its
  weighted split between versions with sticky routing, and the header holding the routing key;
- :mod:`~pyserve.release.store`: :class:`TrafficPolicies`, every model's policy, persisted in its
  folder (``traffic.json``), changed one at a time, each change audited;
- :mod:`~pyserve.release.audit`: :class:`AuditLog`, the JSON-lines log of changes (who, why, when,
  old and new policy);
- :mod:`~pyserve.release.golden`: the validation gate, a version's golden samples (``golden.npz``)
  run before it takes traffic;
- :mod:`~pyserve.release.shadow`: shadow traffic, mirrored to a candidate and compared;
- :mod:`~pyserve.release.rollout`: progressive delivery, the candidate's weight raised in steps while
  its gates hold, rolled back to stable when one fails.

The service layer (:mod:`pyserve.service`) resolves an alias or a split once per request here; the
transports only pass a request's routing header along.
"""

from pyserve.release.audit import AuditLog
from pyserve.release.golden import GOLDEN_FILE, GoldenSamples, check_golden
from pyserve.release.policy import EMPTY, TrafficPolicy, check_alias_name, key_point
from pyserve.release.store import AUDIT_FILE, POLICY_FILE, TrafficPolicies

__all__ = ["AUDIT_FILE", "EMPTY", "GOLDEN_FILE", "POLICY_FILE", "AuditLog", "GoldenSamples", "TrafficPolicies",
           "TrafficPolicy", "check_alias_name", "check_golden", "key_point"]
