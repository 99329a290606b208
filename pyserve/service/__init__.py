"""The protocol-neutral service layer: where a request meets a model, whatever carried it.

- :mod:`~pyserve.service.host`: :class:`ModelHost`, the models of a server without any protocol (the
  repository, the core's completion pump and the runners), usable in-process;
- :mod:`~pyserve.service.context`: :class:`CallContext`, one call's id, routing key, timeout and priority;
- :mod:`~pyserve.service.hooks`: :class:`InferHooks`, what runs around each call (error accounting;
  payload logging and shadow traffic will attach here);
- :mod:`~pyserve.service.inference`: :class:`InferenceService`, resolve model and version, apply the
  request's parameters, submit to the core, select the requested outputs, answer or raise a typed error;
- :mod:`~pyserve.service.control`: :class:`ModelControl`, the repository index, load and unload.

Transports (pyserve.server for HTTP) decode, call the service and encode; nothing here imports them.
"""

from pyserve.service.context import CallContext
from pyserve.service.control import ModelControl
from pyserve.service.hooks import InferHooks
from pyserve.service.host import ModelHost, SingleModel
from pyserve.service.inference import FastRoute, InferenceService, ModelMetadata, VersionStatistics

__all__ = ["CallContext", "FastRoute", "InferHooks", "InferenceService", "ModelControl", "ModelHost", "ModelMetadata", "SingleModel",
           "VersionStatistics"]
