"""Large KServe JSON request bodies, parsed with simdjson: the inputs are checked before their data
is read, and numeric data goes straight into arrays.

orjson makes a Python object of every number of a body before anything can be checked: a 60 MiB body
of nested rows took 1.1 GiB and 5 to 8 s, holding the GIL throughout, even when the model then
refused its shape. simdjson (pysimdjson, the simdjson library of Langdale and Lemire, "Parsing
Gigabytes of JSON per Second", VLDB Journal 2019) parses into a compact tape (about 0.5 s for 60 MiB
here, holding the GIL: such bodies are decoded on the decoder threads, not the event loop's), and gives the tensors' names, datatypes and shapes without touching their data; numeric data is
then copied out of the tape in C (``Array.as_buffer``).

What is read is what :func:`pyserve.protocol.kserve.decode_request` reads, with one difference, as
in Triton: nested ``data`` is flattened in row-major order and only its element count is checked
against the shape (rows of unequal lengths are not refused when the count is right). A body
simdjson refuses (the tokens NaN and Infinity, integers beyond 64 bits, malformed JSON) is left to
the standard decoder, whose messages say what is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import simdjson

from pyserve.datatypes import NUMPY_DTYPES
from pyserve.errors import invalid

# Bodies from this size are parsed here (smaller ones cost orjson less than a parser's set-up).
LARGE_JSON_BYTES = 1 << 20
# as_buffer's element types: doubles for floats (JSON integers too), int64, uint64.
_BUFFER_TYPES = {"f": ("d", np.float64), "i": ("i", np.int64), "u": ("u", np.uint64)}


def parse(body: bytes) -> dict | None:
    """The request document with every value but the inputs' ``data`` as Python objects (each
    ``data`` stays a simdjson value, read by :func:`array_from_json`); None when simdjson refuses the
    body, or it is not a JSON object with a list of inputs (the standard decoder then says why)."""
    try:
        # A parser per body: its buffers are sized to the body, and are freed with it.
        doc = simdjson.Parser().parse(body)
    except (ValueError, UnicodeDecodeError, RuntimeError):
        return None
    if not isinstance(doc, simdjson.Object):
        return None
    light: dict[str, Any] = {}
    for key in doc.keys():
        value = doc[key]
        if key == "inputs" and isinstance(value, simdjson.Array):
            light[key] = [_entry(e) for e in value]
        else:
            light[key] = _python(value)
    return light


def _entry(entry: Any) -> Any:
    if not isinstance(entry, simdjson.Object):
        return _python(entry)
    return {k: (entry[k] if k == "data" else _python(entry[k])) for k in entry.keys()}


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Array):
        return value.as_list()
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value


def array_from_json(name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any, what: str,
                    fallback: Any) -> np.ndarray:
    """The array of one tensor's ``data`` (a simdjson value): numeric datatypes copied from the tape
    in C; BOOL, BYTES and data that is not of one number type go through ``fallback`` (the standard
    decoder's ``_array_from_json``) as Python lists, for its checks and messages."""
    dtype = NUMPY_DTYPES[datatype]
    if not isinstance(data, simdjson.Array) or datatype in ("BOOL", "BYTES"):
        return fallback(name, datatype, shape, count, _python(data), what)
    of_type, buffer_dtype = _BUFFER_TYPES[dtype.kind]
    try:
        flat = np.frombuffer(data.as_buffer(of_type=of_type), buffer_dtype)
    except (TypeError, ValueError):  # a string, a bool, a fraction or a negative in integer data...
        return fallback(name, datatype, shape, count, data.as_list(), what)
    if flat.size != count:
        raise invalid(f"{what} {name!r}: expected {count} elements for shape {list(shape)}, got {flat.size}")
    if dtype.kind in "iu" and flat.size and dtype != buffer_dtype:
        info = np.iinfo(dtype)
        low, high = int(flat.min()), int(flat.max())
        if low < info.min or high > info.max:
            raise invalid(f"{what} {name!r}: {datatype} data must lie in [{info.min}, {info.max}], "
                          f"got values in [{low}, {high}]")
    if dtype.kind == "f" and dtype.itemsize < 8:
        with np.errstate(over="ignore"):
            out = flat.astype(dtype)
        if flat.size and not np.isfinite(out).all():  # the tape holds no NaN or inf: an overflow
            return fallback(name, datatype, shape, count, data.as_list(), what)  # says which value
        return _reshape(out, shape, name, what)
    return _reshape(flat.astype(dtype, copy=False), shape, name, what)


def _reshape(flat: np.ndarray, shape: tuple[int, ...], name: str, what: str) -> np.ndarray:
    try:
        return flat.reshape(shape)
    except (ValueError, OverflowError) as e:  # a zero-size shape numpy cannot hold: [0, 2**62]
        raise invalid(f"{what} {name!r}: cannot make a tensor of shape {list(shape)}: {e}") from None
