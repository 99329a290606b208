"""The model repository, split by job.

- :mod:`~pyserve.repository.sources`: where models come from (a repository folder laid out as Triton's,
  single ONNX files given on the command line) and which names can be models at all;
- :mod:`~pyserve.repository.lifecycle`: loading, swapping in new versions, draining old ones, unloading;
- :mod:`~pyserve.repository.registry`: the models known, their states and their loaded versions, as
  the request path looks them up.
"""

from pyserve.repository.lifecycle import ModelRepository
from pyserve.repository.registry import ModelEntry, ModelRegistry, ModelState, version_number
from pyserve.repository.sources import SingleModel, check_model_name

__all__ = ["ModelEntry", "ModelRegistry", "ModelRepository", "ModelState", "SingleModel", "check_model_name",
           "version_number"]
