"""Triton's classification extension (pyserve.classification): ranking, the score text
C++ std::to_string prints, labels, shapes, and the checks of the class count and the label file.

What Triton does is read from triton-inference-server/server docs/protocol/
extension_classification.md, src/classification.cc and src/http_server.cc, and core
src/label_provider.cc; the module docstring lists it.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyserve.errors import ErrorKind, PyserveError
from pyserve.classification import MAX_CLASSES, check_class_count, classify, read_labels

NUMERIC = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"]


def texts(result: np.ndarray) -> list:
    """The elements of a classify result as str, nested like the array."""
    return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(result).tolist()


def reference(row: np.ndarray, k: int, labels: list[str] | None = None) -> list[str]:
    """Top k of one row the slow, obvious way: highest first, equal values by lower index, NaN
    last; scores with Python's %f (the C library's, for finite numbers and inf)."""
    values = [row[i].item() for i in range(row.size)]

    def key(i: int) -> tuple:
        v = values[i]
        if isinstance(v, float) and math.isnan(v):
            return (1, 0, i)
        return (0, -v, i)

    out = []
    for i in sorted(range(len(values)), key=key)[:k]:
        v = values[i]
        if isinstance(v, float):
            score = ("-nan" if np.signbit(v) else "nan") if math.isnan(v) else f"{v:f}"
        else:
            score = str(v)
        text = f"{score}:{i}"
        if labels is not None and i < len(labels) and labels[i]:
            text += ":" + labels[i]
        out.append(text)
    return out


# ------------------------------------------------------------------------- the documented examples


def test_documented_http_example_scores_and_indices() -> None:
    # extension_classification.md: output0 = [1.1, 3.3, 0.5, 2.4], "classification": 2, a model
    # without batching -> shape [2], data ["3.3:1", "2.4:3"]. The document shortens the score;
    # Triton's server prints it with std::to_string, six decimals.
    out = classify(np.array([1.1, 3.3, 0.5, 2.4], dtype=np.float32), 2, batched=False, labels=None)
    assert out.shape == (2,) and out.dtype == object
    assert all(type(b) is bytes for b in out)
    assert texts(out) == ["3.300000:1", "2.400000:3"]
    documented = ["3.3:1", "2.4:3"]
    for got, doc in zip(texts(out), documented):
        assert re.fullmatch(r"-?\d+\.\d{6}:\d+", got), got
        (score, index), (doc_score, doc_index) = got.split(":"), doc.split(":")
        assert index == doc_index
        assert float(score) == pytest.approx(float(doc_score), abs=5e-7)


def test_documented_http_example_with_labels() -> None:
    # ... and with labels: ["3.3:1:index_1_label", "2.4:3:index_3_label"].
    labels = [f"index_{i}_label" for i in range(4)]
    out = classify(np.array([1.1, 3.3, 0.5, 2.4], dtype=np.float32), 2, False, labels)
    assert texts(out) == ["3.300000:1:index_1_label", "2.400000:3:index_3_label"]
    for got, doc in zip(texts(out), ["3.3:1:index_1_label", "2.4:3:index_3_label"]):
        score, index, label = got.split(":")
        doc_score, doc_index, doc_label = doc.split(":")
        assert (index, label) == (doc_index, doc_label)
        assert float(score) == pytest.approx(float(doc_score), abs=5e-7)


def test_documented_ordering_example_integers_verbatim() -> None:
    # The document's ranking example: [1, 5, 10, 4] -> top-2 indices [2, 1], returned as
    # ["10:2", "5:1"] or, with labels, ["10:2:apple", "5:1:pickle"]. Integer scores print as
    # plain decimals, so here the server's text is the document's, character for character.
    values = np.array([1, 5, 10, 4], dtype=np.uint32)
    assert texts(classify(values, 2, False, None)) == ["10:2", "5:1"]
    labels = ["banana", "pickle", "apple", "pear"]
    assert texts(classify(values, 2, False, labels)) == ["10:2:apple", "5:1:pickle"]
    assert texts(classify(values, 4, False, None)) == ["10:2", "5:1", "4:3", "1:0"]


# ---------------------------------------------------------------------------------------- shapes


def test_batched_output_is_batch_by_k_and_ranks_each_item_alone() -> None:
    values = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)
    out = classify(values, 2, batched=True, labels=["a", "b", "c"])
    assert out.shape == (2, 2)
    assert texts(out) == [["0.700000:1:b", "0.200000:2:c"], ["0.600000:0:a", "0.300000:1:b"]]


def test_unbatched_tensor_is_one_item_even_with_a_leading_dimension() -> None:
    values = np.array([[0.1, 0.7], [0.9, 0.2]], dtype=np.float64)
    out = classify(values, 3, batched=False, labels=None)
    assert out.shape == (3,)
    assert texts(out) == ["0.900000:2", "0.700000:1", "0.200000:3"]


def test_class_count_larger_than_the_classes_is_clamped() -> None:
    values = np.array([[3, 1, 2], [0, 0, 5]], dtype=np.int32)
    out = classify(values, 10, batched=True, labels=None)
    assert out.shape == (2, 3)
    assert texts(out) == [["3:0", "2:2", "1:1"], ["5:2", "0:0", "0:1"]]
    assert classify(values[0], 1_000_000_000, False, None).shape == (3,)


def test_more_than_two_dimensions_are_flattened_row_major_per_item() -> None:
    # Triton: every element after the batch dimension is a class (http_server.cc multiplies the
    # dims after the first into the per-item element count); the index is the flat index.
    values = np.arange(2 * 2 * 3, dtype=np.int16).reshape(2, 2, 3)
    values[1, 0, 2] = 100  # item 1, flat index 2
    out = classify(values, 2, batched=True, labels=None)
    assert out.shape == (2, 2)
    assert texts(out) == [["5:5", "4:4"], ["100:2", "11:5"]]


def test_empty_and_scalar_edges() -> None:
    assert classify(np.zeros((3, 0), np.float32), 2, True, None).shape == (3, 0)
    assert classify(np.zeros((0, 4), np.float32), 2, True, None).shape == (0, 2)
    assert texts(classify(np.float64(2.5), 3, False, None)) == ["2.500000:0"]
    # A batching model's output without dimensions is one item, as Triton treats it.
    assert texts(classify(np.array(7, np.int64), 3, True, None)) == ["7:0"]


def test_input_is_not_modified_and_non_contiguous_views_work() -> None:
    base = np.array([[5.0, 1.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    view = base[:, ::2]  # [[5, 3], [1, 3]]
    before = base.copy()
    assert texts(classify(view, 1, True, None)) == [["5.000000:0"], ["3.000000:1"]]
    np.testing.assert_array_equal(base, before)
    big_endian = np.array([1, 300, 2], dtype=">i4")
    assert texts(classify(big_endian, 1, False, None)) == ["300:1"]


# ----------------------------------------------------------------------------- ranking and text


def test_equal_scores_keep_the_lower_index_first() -> None:
    # Triton's std::sort leaves ties in no defined order; pyserve fixes it: lower index first.
    values = np.array([[1, 7, 7, 3, 7]], dtype=np.int8)
    assert texts(classify(values, 4, True, None)) == [["7:1", "7:2", "7:4", "3:3"]]
    # The partition path (K much smaller than the classes) must agree, ties on the boundary.
    wide = np.zeros((2, 64), dtype=np.float32)
    wide[0, [5, 9, 40]] = 1.0
    wide[1, [63, 2]] = 2.0
    assert texts(classify(wide, 2, True, None)) == [
        ["1.000000:5", "1.000000:9"],
        ["2.000000:2", "2.000000:63"],
    ]
    assert texts(classify(wide, 4, True, None))[1] == [
        "2.000000:2", "2.000000:63", "0.000000:0", "0.000000:1",
    ]


def test_negative_zero_ties_with_zero_and_nan_ranks_last() -> None:
    values = np.array([np.nan, -np.inf, 1.0, -np.nan, -0.0, 0.0, np.inf], dtype=np.float64)
    assert texts(classify(values, 7, False, None)) == [
        "inf:6", "1.000000:2", "-0.000000:4", "0.000000:5", "-inf:1", "nan:0", "-nan:3",
    ]


def test_integer_extremes_and_unsigned_order() -> None:
    ints = np.array([-128, 127, 0, -1], dtype=np.int8)
    assert texts(classify(ints, 4, False, None)) == ["127:1", "0:2", "-1:3", "-128:0"]
    big = np.array([0, 2**64 - 1, 2**63, 2**63 - 1], dtype=np.uint64)
    assert texts(classify(big, 4, False, None)) == [
        "18446744073709551615:1", "9223372036854775808:2", "9223372036854775807:3", "0:0",
    ]
    i64 = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, -5], dtype=np.int64)
    assert texts(classify(i64, 3, False, None)) == [
        "9223372036854775807:1", "-5:2", "-9223372036854775808:0",
    ]


def test_small_float_scores_print_like_percent_f() -> None:
    # 5e-7 as a double is a hair below 5e-7, so six decimals round it down, as printf does.
    values = np.array([1e-7, 123456.789, -2.5, 7.5e-7, 5e-7], dtype=np.float64)
    assert texts(classify(values, 5, False, None)) == [
        "123456.789000:1", "0.000001:3", "0.000000:4", "0.000000:0", "-2.500000:2",
    ]


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    dtype=st.sampled_from(NUMERIC),
    rows=st.integers(1, 3),
    classes=st.integers(1, 80),
)
def test_matches_a_plain_python_reference(data, dtype, rows, classes) -> None:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        # Few distinct values, so ties are common; NaN and infinities included.
        special = [0.0, -0.0, 1.5, -1.5, 2.25, np.inf, -np.inf, np.nan, -np.nan, 2.0**-30, 2.0**127]
        elements = st.sampled_from(special)
    else:
        info = np.iinfo(dt)
        elements = st.sampled_from(sorted({int(info.min), int(info.max), 0, 1, 2, int(info.max) // 2}))
    values = data.draw(hnp.arrays(dt, (rows, classes), elements=elements))
    # K small (the partition path) and K large (the sort path) both drawn.
    k = data.draw(st.one_of(st.integers(1, max(1, classes // 9)), st.integers(1, classes + 3)))
    names = st.sampled_from(["", "cat", "dög", "a:b"])
    labels = data.draw(st.none() | st.lists(names, max_size=classes + 2))
    out = classify(values, k, True, labels)
    assert out.shape == (rows, min(k, classes))
    assert texts(out) == [reference(values[r], k, labels) for r in range(rows)]


# The C++ side of the score text: Triton builds each string as
# std::to_string(value) + ":" + std::to_string(index). This program prints std::to_string of every
# value it reads, so the test compares against the real C++ library, not against a guess of it.
CPP = r"""
#include <cstdint>
#include <cstdio>
#include <string>
template <typename T> static void run(FILE* f) {
  T v;
  while (std::fread(&v, sizeof v, 1, f) == 1) std::printf("%s\n", std::to_string(v).c_str());
}
int main(int argc, char** argv) {
  const std::string t = argv[1];
  FILE* f = std::fopen(argv[2], "rb");
  if (t == "int8") run<int8_t>(f);
  if (t == "int16") run<int16_t>(f);
  if (t == "int32") run<int32_t>(f);
  if (t == "int64") run<int64_t>(f);
  if (t == "uint8") run<uint8_t>(f);
  if (t == "uint16") run<uint16_t>(f);
  if (t == "uint32") run<uint32_t>(f);
  if (t == "uint64") run<uint64_t>(f);
  if (t == "float32") run<float>(f);
  if (t == "float64") run<double>(f);
  return 0;
}
"""


@pytest.fixture(scope="module")
def to_string(tmp_path_factory) -> Path:
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the std::to_string reference")
    folder = tmp_path_factory.mktemp("to_string")
    (folder / "to_string.cc").write_text(CPP)
    source, program = folder / "to_string.cc", folder / "to_string"
    subprocess.run([compiler, "-O0", "-o", str(program), str(source)], check=True)
    return folder / "to_string"


@pytest.mark.parametrize("dtype", NUMERIC)
def test_score_text_is_cpp_std_to_string(dtype, to_string, tmp_path) -> None:
    dt = np.dtype(dtype)
    rng = np.random.default_rng(7)
    if dt.kind == "f":
        finfo = np.finfo(dt)
        values = np.concatenate([
            rng.standard_normal(40) * 10.0 ** rng.integers(-9, 12, 40),
            [0.0, -0.0, 0.5, 1 / 3, 2.5e-7, -1.5e-6, 0.0000005, 1e20, -1e30, float(finfo.max),
             float(finfo.min), float(finfo.tiny), np.inf, -np.inf, np.nan],
        ]).astype(dt)
    else:
        info = np.iinfo(dt)
        values = np.concatenate([
            rng.integers(info.min, info.max, 40, dtype=dt, endpoint=True),
            np.array([info.min, info.max, 0], dtype=dt),
        ])
    data = tmp_path / "values.bin"
    data.write_bytes(values.astype(dt.newbyteorder("=")).tobytes())
    expected = subprocess.run([str(to_string), dtype, str(data)], check=True, capture_output=True, text=True)
    cpp = expected.stdout.splitlines()
    assert len(cpp) == values.size
    out = texts(classify(values, values.size, False, None))
    for text in out:
        score, index = text.rsplit(":", 1)
        assert score == cpp[int(index)], (values[int(index)], score, cpp[int(index)])
    assert sorted(int(t.rsplit(":", 1)[1]) for t in out) == list(range(values.size))


# ------------------------------------------------------------------------------------------ labels


def test_labels_missing_past_the_end_or_empty_leave_no_colon() -> None:
    values = np.array([4, 3, 2, 1], dtype=np.int32)
    assert texts(classify(values, 4, False, ["zero", "", "two"])) == ["4:0:zero", "3:1", "2:2:two", "1:3"]
    assert texts(classify(values, 2, False, [])) == ["4:0", "3:1"]
    # More labels than classes is fine; a label may hold colons and any UTF-8.
    out = classify(values, 1, False, ["ça:va", "x", "y", "z", "extra"])
    assert out[0] == "4:0:ça:va".encode()


def test_read_labels_follows_getline(tmp_path) -> None:
    path = tmp_path / "labels.txt"
    path.write_bytes(b"cat\ndog\n\nbird")
    assert read_labels(path) == ["cat", "dog", "", "bird"]
    path.write_bytes(b"cat\ndog\n")
    assert read_labels(path) == ["cat", "dog"]  # the final newline ends a line, adds none
    path.write_bytes(b"cat\ndog\n\n")
    assert read_labels(path) == ["cat", "dog", ""]
    path.write_bytes(b"")
    assert read_labels(path) == []
    path.write_bytes(b"\n")
    assert read_labels(path) == [""]
    # Triton splits at \n only: a CRLF file leaves \r in the labels (its own tests strip it).
    path.write_bytes(b"cat\r\ndog\r\n")
    assert read_labels(path) == ["cat\r", "dog\r"]
    # Labels are C strings in Triton: each ends at its first NUL.
    path.write_bytes(b"ca\x00t\ndog")
    assert read_labels(path) == ["ca", "dog"]
    path.write_bytes("\ufeffzéro\nun\n".encode())
    assert read_labels(str(path)) == ["\ufeffzéro", "un"]


def test_read_labels_then_classify(tmp_path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("index_0_label\nindex_1_label\nindex_2_label\nindex_3_label\n")
    out = classify(np.array([[1.1, 3.3, 0.5, 2.4]], np.float32), 2, True, read_labels(path))
    assert texts(out) == [["3.300000:1:index_1_label", "2.400000:3:index_3_label"]]


def test_read_labels_errors_name_the_file(tmp_path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(PyserveError) as e:
        read_labels(missing)
    assert e.value.kind is ErrorKind.INVALID_ARGUMENT and "nope.txt" in e.value.message
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(PyserveError) as e:
        read_labels(bad)
    assert e.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "latin1.txt" in e.value.message and "UTF-8" in e.value.message


# ------------------------------------------------------------------------------ refused requests


@pytest.mark.parametrize("value", [1, 2, 1000, 2**40, np.int64(3), np.uint32(5)])
def test_check_class_count_accepts_positive_integers(value) -> None:
    got = check_class_count(value, "probs")
    assert got == int(value) and type(got) is int


@pytest.mark.parametrize(
    "value, words",
    [
        (0, "got 0"),
        (-3, "got -3"),
        (True, "boolean"),
        (False, "boolean"),
        (np.bool_(True), "boolean"),
        (2.0, "float"),
        (2.5, "float"),
        ("2", "str"),
        (None, "NoneType"),
        ([2], "list"),
    ],
)
def test_check_class_count_refuses_with_the_output_name(value, words) -> None:
    with pytest.raises(PyserveError) as e:
        check_class_count(value, "probs")
    assert e.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "'probs'" in e.value.message and "classification" in e.value.message
    assert words in e.value.message


def test_classify_checks_the_class_count_too() -> None:
    with pytest.raises(PyserveError) as e:
        classify(np.zeros(3, np.float32), 0, False, None, output="probs")
    assert e.value.kind is ErrorKind.INVALID_ARGUMENT and "'probs'" in e.value.message


@pytest.mark.parametrize(
    "values, datatype",
    [
        (np.zeros(4, np.float16), "FP16"),
        (np.zeros(4, np.bool_), "BOOL"),
        (np.array([b"a", b"b"], dtype=object), "BYTES"),
        (np.zeros(4, np.complex64), "complex64"),
    ],
)
def test_unsupported_datatypes_are_refused_as_triton_does(values, datatype) -> None:
    with pytest.raises(PyserveError) as e:
        classify(values, 1, False, None, output="probs")
    assert e.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "'probs'" in e.value.message
    assert f"unsupported type '{datatype}'" in e.value.message


def test_too_many_classes_per_item_is_refused() -> None:
    ok = np.zeros((1, MAX_CLASSES), dtype=np.uint8)
    assert classify(ok, 1, True, None).shape == (1, 1)
    with pytest.raises(PyserveError) as e:
        classify(np.zeros((1, MAX_CLASSES + 1), dtype=np.uint8), 1, True, None, output="logits")
    assert e.value.kind is ErrorKind.INVALID_ARGUMENT
    assert "'logits'" in e.value.message and "too large" in e.value.message
    # The limit is per batch item: many items of fewer classes are fine.
    assert classify(np.zeros((3, MAX_CLASSES // 2), dtype=np.uint8), 1, True, None).shape == (3, 1)
