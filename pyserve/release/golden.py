"""The validation gate: a version's golden samples, run before it takes any traffic.

A version folder may hold ``golden.npz`` (numpy's ``np.savez`` format), with one array per input and
per expected output, the samples along the first axis:

- ``inputs/NAME``: the input ``NAME`` of every sample (every input of the model that a request needs);
- ``outputs/NAME``: what output ``NAME`` must be (the outputs to check: others are not compared);
- ``atol``, ``rtol`` (optional scalars; per output ``atol/NAME``, ``rtol/NAME``): the tolerance of
  floating-point outputs, as :func:`numpy.isclose`: ``|got - expected| <= atol + rtol * |expected|``.
  Defaults 1e-5 and 1e-4. Integer, boolean and string outputs must match exactly.

Each sample is one request. An array with as many dimensions as the tensor's full shape (the batch
dimension first when the model batches) holds the samples along that first dimension: sample ``i``
is ``array[i:i+1]``, a request of one (the demo's ``samples.npz`` is laid out so: ``x`` [16, 64]).
An array with one dimension more holds one whole request per entry: sample ``i`` is ``array[i]``
(for a model whose requests hold several items, or whose shape has no such dimension).
BYTES inputs and outputs are stored as numpy strings (``S`` or ``U`` dtypes; ``U`` is compared as
UTF-8), never as pickled objects: the file is read with ``allow_pickle=False``.

:func:`check_golden` runs them through the version's own queue (the path a request takes) before the
version joins the registry at startup or load, and again before an alias or a weight first sends it
traffic. A version that fails is refused (INVALID_ARGUMENT) and stays out of traffic; the error and
the log name the sample, the output and the difference.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pyserve.errors import PyserveError, invalid

if TYPE_CHECKING:
    from prometheus_client import Counter

    from pyserve.runtime import ModelRunner

log = logging.getLogger("pyserve.release")

GOLDEN_FILE = "golden.npz"
# Golden samples are a handful of requests: a bound on the arrays' bytes once unzipped (a compressed
# member can unzip to far more than the file holds).
MAX_GOLDEN_BYTES = 1 << 30
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4


class GoldenSamples:
    """The golden samples of one version: ``inputs`` and ``outputs`` (name -> array, samples along
    axis 0), ``count`` samples, and per-output tolerances ``atol``/``rtol``."""

    def __init__(self, path: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                 atol: dict[str, float], rtol: dict[str, float]) -> None:
        self.path = path
        self.inputs = inputs
        self.outputs = outputs
        self.atol = atol
        self.rtol = rtol
        counts = {len(a) for a in (*inputs.values(), *outputs.values())}
        if len(counts) != 1:
            sizes = ", ".join(f"{k} {len(a)}" for k, a in (*inputs.items(), *outputs.items()))
            raise invalid(f"{path}: every array must hold the same number of samples along its first axis, "
                          f"got {sizes}")
        self.count = counts.pop()

    @classmethod
    def read(cls, path: Path) -> GoldenSamples:
        """Reads ``path``; INVALID_ARGUMENT naming the file and what is wrong with it."""
        try:
            _check_sizes(path)
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except PyserveError:
            raise
        except Exception as e:  # numpy's header parser raises what it meets (tokenize errors, ...)
            raise invalid(f"{path}: not a golden-sample file numpy can read without pickle: {e}") from None
        inputs: dict[str, np.ndarray] = {}
        outputs: dict[str, np.ndarray] = {}
        atol: dict[str, float] = {}
        rtol: dict[str, float] = {}
        for key, array in arrays.items():
            group, _, name = key.partition("/")
            if group in ("inputs", "outputs") and name:
                if array.ndim == 0:
                    raise invalid(f"{path}: {key}: expected samples along the first axis, got a scalar")
                if array.dtype.kind == "O":
                    raise invalid(f"{path}: {key}: object arrays are not read (store strings as S or U)")
                (inputs if group == "inputs" else outputs)[name] = array
            elif group in ("atol", "rtol") and array.ndim == 0 and array.dtype.kind in "fiu":
                tolerance = float(array)
                if not tolerance >= 0:
                    raise invalid(f"{path}: {key}: expected a tolerance >= 0, got {tolerance}")
                (atol if group == "atol" else rtol)[name] = tolerance
            else:
                raise invalid(f"{path}: unexpected array {key!r}; expected inputs/NAME, outputs/NAME, "
                              "and the scalars atol, rtol, atol/NAME, rtol/NAME")
        if not inputs or not outputs:
            raise invalid(f"{path}: expected inputs/NAME and outputs/NAME arrays, got {', '.join(arrays) or 'none'}")
        return cls(path, inputs, outputs, atol, rtol)

    def tolerance(self, output: str) -> tuple[float, float]:
        """(atol, rtol) of ``output``: its own, else the file's, else the defaults."""
        return (self.atol.get(output, self.atol.get("", DEFAULT_ATOL)),
                self.rtol.get(output, self.rtol.get("", DEFAULT_RTOL)))


def _check_sizes(path: Path) -> None:
    """INVALID_ARGUMENT when an array's header declares more bytes than its member holds: numpy
    allocates what the header says before it reads (a 50-byte file can ask for terabytes)."""
    with zipfile.ZipFile(path) as z:
        total = sum(info.file_size for info in z.infolist())
        if total > MAX_GOLDEN_BYTES:
            raise invalid(f"{path}: its arrays hold {total} bytes unzipped, more than the {MAX_GOLDEN_BYTES} "
                          "a golden-sample file may")
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with z.open(info) as f:
                fmt = np.lib.format
                version = fmt.read_magic(f)
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read_header(f)
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared > info.file_size:
                raise invalid(f"{path}: array {info.filename[:-4]!r} declares shape {list(shape)} of "
                              f"{dtype} ({declared} bytes) but holds {info.file_size} bytes")


async def check_golden(runner: ModelRunner, version_dir: Path, checks: Counter | None = None) -> int:
    """Runs the golden samples of ``version_dir`` (if it has a golden file) on ``runner``; returns how
    many ran (0: no file). Raises INVALID_ARGUMENT naming the model, version, sample index, output and
    difference for the first sample that fails, after logging it at ERROR. ``checks`` counts the
    checks, labelled ``model``, ``version`` and ``result`` (``passed``, ``failed``)."""
    path = Path(version_dir) / GOLDEN_FILE
    if not path.is_file():
        return 0
    name, version = runner.config.name, runner.version
    try:
        golden = GoldenSamples.read(path)
        config = runner.config
        extra = int(config.max_batch_size > 0)  # the batch dimension, first in a request
        ranks = {"inputs": {t.name: len(t.shape) + extra for t in config.inputs},
                 "outputs": {t.name: len(t.shape) + extra for t in config.outputs}}
        whole = {f"{group}/{k}": _stacked(path, name, group, k, a, ranks[group])
                 for group, arrays in (("inputs", golden.inputs), ("outputs", golden.outputs))
                 for k, a in arrays.items()}
        def pick(key: str, a: np.ndarray, i: int) -> np.ndarray:
            return a[i] if whole[key] else a[i:i + 1]

        for i in range(golden.count):
            inputs = {k: _wire(pick(f"inputs/{k}", a, i)) for k, a in golden.inputs.items()}
            try:
                got = await runner.infer(inputs)
            except PyserveError as e:
                raise invalid(f"sample {i}: the model answered an error: {e.message}") from None
            for output, expected in golden.outputs.items():
                problem = _compare(got[output], pick(f"outputs/{output}", expected, i), *golden.tolerance(output))
                if problem:
                    raise invalid(f"sample {i}, output '{output}': {problem}")
    except PyserveError as e:
        message = f"model '{name}' version {version} failed its golden samples ({path}): {e.message}"
        log.error("%s; the version is refused and takes no traffic", message)
        if checks is not None:
            checks.labels(name, version, "failed").inc()
        raise invalid(message) from None
    if checks is not None:
        checks.labels(name, version, "passed").inc()
    log.info("model %s version %s passed its %d golden samples", name, version, golden.count)
    return golden.count


def _stacked(path: Path, model: str, group: str, key: str, array: np.ndarray, ranks: dict[str, int]) -> bool:
    """Whether ``array`` holds one whole request per entry (True) or samples along the batch dimension."""
    rank = ranks.get(key)
    if rank is None:
        raise invalid(f"{path}: {group}/{key}: model '{model}' has no {group[:-1]} {key!r} "
                      f"({group}: {', '.join(sorted(ranks))})")
    if array.ndim not in (rank, rank + 1):
        raise invalid(f"{path}: {group}/{key}: {array.ndim} dimensions; expected {rank} (samples along "
                      f"the first dimension) or {rank + 1} (one request per entry)")
    return array.ndim == rank + 1


def _wire(array: np.ndarray) -> np.ndarray:
    """An input as the core takes it: strings as an object array of bytes (BYTES)."""
    if array.dtype.kind in "SU":
        return _as_bytes(array)
    return np.ascontiguousarray(array)


def _as_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    for index, value in np.ndenumerate(array):
        out[index] = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return out


def _compare(got: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> str | None:
    """None when ``got`` matches ``expected``; else what differs, with the values."""
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {list(got.shape)}, expected {list(expected.shape)}"
    if expected.dtype.kind in "SU" or got.dtype.kind == "O":
        want = _as_bytes(expected) if expected.dtype.kind in "SU" else expected
        wrong = [(i, g, w) for (i, g), w in zip(np.ndenumerate(got), want.ravel()) if g != w]
        if wrong:
            i, g, w = wrong[0]
            return f"{len(wrong)} of {got.size} values differ; first at index {list(i)}: got {g!r}, expected {w!r}"
        return None
    if expected.dtype.kind in "fc" or got.dtype.kind in "fc":
        g, w = got.astype(np.float64), expected.astype(np.float64)
        close = np.isclose(g, w, atol=atol, rtol=rtol, equal_nan=True)
        if close.all():
            return None
        diff = np.where(close, 0.0, np.abs(g - w))
        diff = np.where(np.isnan(diff), np.inf, diff)
        at = np.unravel_index(int(np.argmax(diff)), diff.shape)
        return (f"{int((~close).sum())} of {got.size} values differ by more than atol {atol:g} + rtol {rtol:g} "
                f"* |expected|; largest |difference| {float(diff[at]):.6g} at index {[int(x) for x in at]}: "
                f"got {float(g[at]):.6g}, expected {float(w[at]):.6g}")
    wrong = got != expected
    if wrong.any():
        at = np.argwhere(wrong)[0]
        return (f"{int(wrong.sum())} of {got.size} values differ; first at index {[int(x) for x in at]}: "
                f"got {got[tuple(at)].item()!r}, expected {expected[tuple(at)].item()!r}")
    return None
