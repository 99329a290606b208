"""Triton's classification extension: an output replaced by its top-K classes as strings.

A request asks for it per output with the parameter ``"classification": K`` (tritonclient's
``InferRequestedOutput(name, class_count=K)``). The answer for that output is a BYTES tensor, shape
``[batch, K']`` for a batching model and ``[K']`` otherwise, ``K' = min(K, classes)``, whose elements
are ``"<score>:<index>"`` or ``"<score>:<index>:<label>"``, the highest score first.

What Triton does, and this module with it (server ``docs/protocol/extension_classification.md``;
server ``src/classification.cc`` ``TopkClassifications`` and ``src/http_server.cc`` where the
response is built; core ``src/label_provider.cc`` and ``src/infer_response.cc`` for labels):

- Scores are compared in the output's own datatype. Supported: INT8..INT64, UINT8..UINT64, FP32,
  FP64. Anything else (BOOL, FP16, BYTES) is INVALID_ARGUMENT "class result not available for
  output due to unsupported type ...".
- The score is C++ ``std::to_string`` of the value: ``printf("%f")`` for FP32 (promoted to double)
  and FP64, so 3.3 reads ``"3.300000"`` (the protocol document abbreviates it to ``"3.3"``, the
  server does not), NaN reads ``"nan"`` or ``"-nan"`` as glibc prints it; plain decimal for ints.
- Per batch item, every element after the batch dimension is one class: an output of shape
  ``[batch, 2, 3]`` has 6 classes, indices 0..5 in row-major order. No dimension rule.
- ``K`` larger than the number of classes is clamped to it.
- The label of index ``i`` is line ``i`` of the output's ``label_filename`` (see
  :func:`read_labels`); an index past the last line, or an empty line, gives no label and no
  second colon.
- At most 1,000,000 classes per batch item; more is INVALID_ARGUMENT "classification output
  tensor too large".

Where Triton leaves it open, this module decides: Triton's ``std::sort`` is not stable, so equal
scores come out in no defined order; here the lower index comes first. A NaN has no place in
Triton's ``>`` ordering (undefined behaviour of ``std::sort``); here NaN ranks below every number,
-inf included.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from os import PathLike

import numpy as np

from pyserve.datatypes import datatype_of
from pyserve.errors import PyserveError, invalid

__all__ = ["MAX_CLASSES", "check_class_count", "classify", "read_labels"]

# Triton's kMaxClassificationElements: the classes of one batch item it will rank.
MAX_CLASSES = 1_000_000

# The datatypes Triton ranks (its TopkClassifications switch); the rest are refused.
_SUPPORTED = frozenset(
    ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP32", "FP64"]
)


def _who(output: str | None) -> str:
    return "output" if output is None else f"output {output!r}"


def check_class_count(value: object, output: str | None = None) -> int:
    """The class count K of an output's ``"classification"`` parameter, checked.

    ``value`` is the parameter as decoded from JSON or msgpack; ``output`` names the output in the
    message. Accepted: a Python or numpy integer >= 1, returned as ``int``. There is no upper
    bound: :func:`classify` clamps K to the number of classes, as Triton does.

    Raises ``PyserveError`` INVALID_ARGUMENT naming the output for a boolean (an int subclass in
    Python, refused as Triton's ``AsUInt`` refuses JSON ``true``), a float (even ``2.0``: Triton
    refuses JSON numbers that are not unsigned integers), any other non-integer, and an integer
    below 1.

    Unlike Triton, 0 is refused: Triton's HTTP front end reads 0 as "no classification" and
    returns the raw tensor (``class_cnt_ > 0`` in ``src/http_server.cc``); tritonclient never
    sends 0 (``InferRequestedOutput`` drops ``class_count=0``). A caller that wants Triton's
    leniency skips this check when the parameter is 0.

    Source: Triton server ``docs/protocol/extension_classification.md`` ("classification":
    $number / int64_param), ``src/http_server.cc`` ``CheckClassificationOutput``.
    """
    if isinstance(value, (bool, np.bool_)):
        raise invalid(
            f"{_who(output)}: 'classification' must be an integer >= 1 (the number of classes to "
            f"return), got the boolean {value!r}"
        )
    if not isinstance(value, (int, np.integer)):
        raise invalid(
            f"{_who(output)}: 'classification' must be an integer >= 1 (the number of classes to "
            f"return), got {type(value).__name__} {value!r}"
        )
    count = operator.index(value)
    if count < 1:
        raise invalid(
            f"{_who(output)}: 'classification' must be an integer >= 1 (the number of classes to "
            f"return), got {count}"
        )
    return count


def read_labels(path: str | PathLike[str]) -> list[str]:
    """The labels of a label file: line ``i`` is the label of class index ``i``.

    Read as Triton's ``LabelProvider::AddLabels`` reads it (``std::getline``): lines split at
    ``\\n`` only, so a ``\\r`` of a CRLF file stays in the label (Triton's own tests strip it
    before comparing); a last line without a newline counts, a final newline adds no empty label;
    empty lines are kept (their index has no label). Each label ends at its first NUL character,
    as Triton hands labels on as C strings. The file must be UTF-8 (a BOM stays in the first
    label, as its bytes do in Triton's).

    Returns a list of ``str`` (empty for an empty file). Raises ``PyserveError`` INVALID_ARGUMENT
    naming the path when the file cannot be read (also a path with a NUL character) or is not UTF-8.

    Source: Triton core ``src/label_provider.cc``; the file is the ``label_filename`` of the output
    in the model configuration, relative to the model folder (core ``src/model.cc``).
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as e:
        raise invalid(f"label file {str(path)!r}: cannot read it: {e.strerror or e}") from None
    except ValueError as e:  # a path no file can have: a NUL character
        raise invalid(f"label file {str(path)!r}: cannot read it: {e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"label file {str(path)!r}: not UTF-8 text (byte {e.start})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # a final newline ends the last line; an empty file has no line
    if "\0" in text:
        lines = [line.split("\0", 1)[0] for line in lines]
    return lines


def classify(
    values: np.ndarray,
    class_count: int,
    batched: bool,
    labels: Sequence[str] | None = None,
    *,
    output: str | None = None,
) -> np.ndarray:
    """The top ``class_count`` classes of an output tensor, as Triton's classification extension.

    ``values``: the output of the model, a numeric array (INT*, UINT*, FP32, FP64). With ``batched``
    (the model batches, ``max_batch_size > 0``) its first dimension is the batch and each batch
    item is ranked on its own; otherwise the whole tensor is one item. All the elements of an
    item, flattened in row-major order, are its classes, whatever its shape. A batched array
    without dimensions is one item, as in Triton.

    ``class_count``: K, checked with :func:`check_class_count`; clamped to the number of classes.
    ``labels``: label ``i`` names class ``i`` (:func:`read_labels`); ``None``, a missing or an
    empty label leaves the ``":<label>"`` part out. ``output`` names the output in messages.

    Returns an object array of ``bytes`` (UTF-8), shape ``(batch, K')`` when ``batched`` and
    ``(K',)`` otherwise, ``K' = min(K, classes)``. Element ``[b, j]`` is the j-th highest score of
    item ``b``: ``b"<score>:<index>[:<label>]"``, the score printed as C++ ``std::to_string``
    prints it (``"%f"`` for floats: ``b"0.250000:3:cat"``; decimal for integers). Equal scores:
    lower index first. NaN: after every number.

    Raises ``PyserveError`` INVALID_ARGUMENT naming the output for an unsupported datatype (BOOL,
    FP16, BYTES, or a numpy dtype with no KServe datatype), for more than
    :data:`MAX_CLASSES` classes per item, and for a bad ``class_count``.

    Source: Triton server ``src/classification.cc`` (ranking, formatting, limit) and
    ``src/http_server.cc`` (batch split, shape); ``docs/protocol/extension_classification.md``.
    """
    k = check_class_count(class_count, output)
    values = np.asarray(values)
    try:
        datatype = datatype_of(values.dtype)
    except PyserveError:
        datatype = str(values.dtype)
    if datatype not in _SUPPORTED:
        raise invalid(
            f"{_who(output)}: class result not available for output due to unsupported type "
            f"'{datatype}'; classification needs an integer, FP32 or FP64 output"
        )
    batched = batched and values.ndim > 0
    rows = values.shape[0] if batched else 1
    classes = int(np.prod(values.shape[1:] if batched else values.shape, dtype=np.int64))
    if classes > MAX_CLASSES:
        raise invalid(
            f"{_who(output)}: classification output tensor too large: {classes} classes per "
            f"{'batch item' if batched else 'request'}, at most {MAX_CLASSES}"
        )
    flat = values.reshape(rows, classes)
    k = min(k, classes)

    order = _top_order(_rank_key(flat), k)
    top = np.take_along_axis(flat, order, axis=1)

    if values.dtype.kind == "f":
        wide = top.astype(np.float64)
        scores = np.char.mod("%f", wide)
        negative_nan = np.isnan(wide) & np.signbit(wide)
        if negative_nan.any():  # glibc prints the sign of a NaN, Python does not
            scores = np.where(negative_nan, "-nan", scores)
    else:
        scores = top.astype(np.str_)
    text = np.char.add(np.char.add(scores, ":"), order.astype(np.str_))

    if labels is not None and len(labels) > 0 and k > 0:
        table = np.asarray(labels, dtype=np.str_)
        if table.ndim != 1:
            raise invalid(f"{_who(output)}: labels must be a sequence of strings")
        named = order < table.shape[0]
        picked = np.where(named, table[np.minimum(order, table.shape[0] - 1)], "")
        text = np.where(picked != "", np.char.add(np.char.add(text, ":"), picked), text)

    result = np.char.encode(text, "utf-8").astype(object)
    return result if batched else result.reshape(k)


_SIGN = np.uint64(1 << 63)


def _rank_key(flat: np.ndarray) -> np.ndarray:
    """A uint64 key per element that orders like the values, highest value first (smallest key).

    Floats become their IEEE-754 bits made monotonic (-0.0 counts as 0.0; every NaN gets the
    largest key, after -inf); signed integers get their sign bit flipped. Integer keys, unlike
    the floats themselves, compare equal exactly when the values do and have no NaN, so ranking
    them is a plain integer problem.
    """
    kind = flat.dtype.kind
    if kind == "f":
        wide = flat.astype(np.float64)  # a copy: worked on in place below
        wide += 0.0  # -0.0 + 0.0 == +0.0: equal values, equal keys
        nan = np.isnan(wide)
        # Negative floats: all bits flipped (larger magnitude, smaller key); others: sign bit set.
        flip = (wide.view(np.int64) >> 63).view(np.uint64)
        flip |= _SIGN
        ordered = wide.view(np.uint64)
        ordered ^= flip
        if nan.any():
            ordered[nan] = 0
    elif kind == "i":
        ordered = flat.astype(np.int64).view(np.uint64)
        ordered ^= _SIGN
    else:
        ordered = flat.astype(np.uint64)
    return np.invert(ordered, out=ordered)


def _top_order(key: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the ``k`` smallest keys, smallest first, ties by lower index.

    A stable sort of the whole row when ``k`` is a good part of it; else a partition finds the
    k-th key ``t`` of each row, takes every key below ``t`` and as many of the keys equal to ``t``
    as still fit, lowest index first, and sorts only those ``k``.
    """
    rows, classes = key.shape
    if k == 0 or rows == 0:
        return np.zeros((rows, k), dtype=np.intp)
    if k * 8 >= classes:
        return np.argsort(key, axis=1, kind="stable")[:, :k]
    kth = np.partition(key, k - 1, axis=1)[:, k - 1 : k]
    below = key < kth
    tied = key == kth
    room = k - np.count_nonzero(below, axis=1, keepdims=True)
    chosen = below | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))
    columns = np.nonzero(chosen)[1].reshape(rows, k)  # exactly k per row, ascending
    picked = np.take_along_axis(key, columns, axis=1)
    return np.take_along_axis(columns, np.argsort(picked, axis=1, kind="stable"), axis=1)
