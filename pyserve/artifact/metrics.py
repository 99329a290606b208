"""The info metric of versions served from artifacts: ``pyserve_model_artifact_info``.

One sample, value 1, per loaded version unpacked from a ``.pyserve`` artifact, labelled ``model``,
``version``, ``artifact_sha256``, ``lock_sha256`` and ``training_commit`` (the Prometheus "info"
pattern, as ``python_info`` and kube-state-metrics' ``kube_pod_info``): dashboards join it on
``model, version`` to show which artifact is serving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import InfoMetricFamily
from prometheus_client.registry import Collector

from pyserve.artifact.serving import INFO_LABELS
from pyserve.runtime import ModelRunner

Provenance = Callable[[str, str], "dict[str, str] | None"]


class ArtifactInfoCollector(Collector):
    """Collects ``pyserve_model_artifact_info`` of ``runners()`` at scrape time, their provenance from
    ``provenance(model, version)`` (:meth:`pyserve.service.host.ModelHost.provenance`)."""

    def __init__(self, runners: Callable[[], Iterable[ModelRunner]], provenance: Provenance) -> None:
        self._runners = runners
        self._provenance = provenance

    def collect(self):  # type: ignore[override]
        family = InfoMetricFamily("pyserve_model_artifact",
                                  "The artifact a model version is served from (value 1): its sha256, its "
                                  "lock's sha256 and the training code's git commit ('' when not given).",
                                  labels=["model", "version"])
        for runner in self._runners():
            found = self._provenance(runner.config.name, runner.version)
            if found is not None:
                family.add_metric([runner.config.name, runner.version], {k: found[k] for k in INFO_LABELS})
        yield family
