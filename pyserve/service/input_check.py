"""A model's inputs checked against what a request declares, before its element data is decoded.

A body's tensors are checked by name, datatype, shape, batch size and byte size as soon as their
headers are read: a request the model would refuse costs no decoding (a 60 MiB body of the wrong
shape once took 1.8 GiB and seconds of the event loop before the core refused it). The checks and
their messages are the core's (``Scheduler::Validate`` in ``csrc/core/scheduler.cc``), which still
checks every request it queues.
"""

from __future__ import annotations

from pyserve.config import ModelConfig, TensorSpec
from pyserve.datatypes import NUMPY_DTYPES
from pyserve.errors import invalid
from pyserve.protocol import TensorHeader


def _shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class InputCheck:
    """The checks of one model config's inputs; call it with a request's tensor headers.

    Raises INVALID_ARGUMENT naming the input: an input the model does not have (when none it needs
    is missing: the core then names the missing one, after the data's own errors, as before this
    check existed); a datatype, rank or fixed dimension that differs from the config (-1 matches any size); for a model that batches,
    a first dimension outside 1..max_batch_size or differing between inputs; raw data of another size
    than the shape's (fewer than 4 bytes per BYTES element, or not itemsize bytes per element).
    """

    def __init__(self, config: ModelConfig) -> None:
        self._specs: dict[str, TensorSpec] = {s.name: s for s in config.inputs}
        # Each input's expected shape as the wire gives it (the batch dimension first, -1), built
        # once rather than for every request.
        self._expected: dict[str, tuple[int, ...]] = {
            s.name: (-1, *s.shape) if config.max_batch_size > 0 else tuple(s.shape) for s in config.inputs}
        self._names = ", ".join(s.name for s in config.inputs)
        self._batching = config.max_batch_size > 0
        self._max_batch_size = config.max_batch_size
        self._auto_batch = "max_batch_size" in config.auto_completed

    def __call__(self, headers: list[TensorHeader]) -> None:
        given = {h.name for h in headers}
        missing = any(name not in given and not spec.optional for name, spec in self._specs.items())
        if not missing:  # with an input missing, the core names it once the data is decoded
            for h in headers:
                if h.name not in self._specs:
                    raise invalid(f"unexpected input '{h.name}': the model's inputs are {self._names}")
        batch_size = None
        first = ""
        for h in headers:
            spec = self._specs.get(h.name)
            if spec is None:
                continue
            # The messages are formatted only when raised: this runs for every request.
            if h.datatype != spec.datatype:
                raise invalid(f"input '{h.name}': expected datatype {spec.datatype}, got {h.datatype}")
            expected = self._expected[h.name]
            if len(h.shape) != len(expected) or any(e >= 0 and d != e for d, e in zip(h.shape, expected)):
                raise invalid(f"input '{h.name}': expected shape {_shape_text(expected)}, "
                              f"got {_shape_text(h.shape)}")
            if self._batching:
                if batch_size is None:
                    batch_size, first = h.shape[0], h.name
                elif h.shape[0] != batch_size:
                    raise invalid(f"input '{h.name}': batch dimension {h.shape[0]} differs from input "
                                  f"'{first}' ({batch_size})")
            if h.nbytes is not None:  # the decoders' words (pyserve.protocol.array_from_raw)
                if h.datatype == "BYTES":
                    if h.count * 4 > h.nbytes:
                        raise invalid(f"input '{h.name}': expected at least {h.count * 4} bytes of BYTES "
                                      f"data for shape {list(h.shape)} ({h.count} elements), got {h.nbytes}")
                elif h.count * NUMPY_DTYPES[h.datatype].itemsize != h.nbytes:
                    raise invalid(f"input '{h.name}': expected {h.count * NUMPY_DTYPES[h.datatype].itemsize} "
                                  f"bytes for {h.datatype} shape {list(h.shape)}, got {h.nbytes}")
        if batch_size is not None:
            if batch_size < 1:
                raise invalid(f"the batch dimension must be at least 1, got {batch_size}")
            if batch_size > self._max_batch_size:
                message = (f"input '{first}': batch of {batch_size} samples (its first dimension) exceeds "
                           f"max_batch_size {self._max_batch_size}")
                if self._auto_batch:  # as ModelRunner._refused says it for the core's refusal
                    message += (f"; max_batch_size {self._max_batch_size} is pyserve's default for a model "
                                "whose first dimension is dynamic: set max_batch_size in the model's config "
                                "(0: requests of any size, no batching) or start the server with "
                                "--default-max-batch-size")
                raise invalid(message)
