"""Triton's extensions as stock tritonclient code uses them, over a real server: classification
(``class_count``) with and without a label file, the statistics schema of
``get_inference_statistics``, and the extensions the server metadata advertises."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
import pytest
import requests
from conftest import Repo, run_onnx

pytest.importorskip("onnx")
httpclient = pytest.importorskip("tritonclient.http")

LABELS = ["cat", "dog", "", "emu"]  # class 2 has an empty label: no ":label" part, as in Triton


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, serve_module):  # type: ignore[no-untyped-def]
    repo = Repo(tmp_path_factory.mktemp("ext") / "models")
    labelled = repo.onnx("labelled", {1: 1.0}, config="max_batch_size = 8\n[[outputs]]\nname = \"y\"\n"
                         "datatype = \"FP32\"\nshape = [4]\nlabel_filename = \"labels.txt\"\n"
                         "[[outputs]]\nname = \"argmax\"\ndatatype = \"INT64\"\nshape = []\n")
    (labelled / "labels.txt").write_text("\n".join(LABELS) + "\n")
    repo.onnx("plain", {1: 1.0, 2: 2.0}, config="max_batch_size = 8\n[version_policy]\nall = true\n")
    repo.onnx("nolabels", {1: 1.0}, config='[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [-1, 4]\n'
              'label_filename = "missing.txt"\n')
    server = serve_module([str(repo.root), "--no-strict-readiness"])
    server.repo = repo  # type: ignore[attr-defined]
    return server


def top_k(y: np.ndarray, k: int, labels: list[str] | None) -> list[list[bytes]]:
    rows = []
    for item in y:
        order = sorted(range(len(item)), key=lambda i: (-item[i], i))[:k]
        rows.append([(f"{item[i]:f}:{i}" + (f":{labels[i]}" if labels and labels[i] else "")).encode()
                     for i in order])
    return rows


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classification_with_tritonclient(server, binary: bool) -> None:  # type: ignore[no-untyped-def]
    x = np.array([[0.5, -1.0, 3.0, 2.0], [4.0, 1.0, 0.0, -2.0]], np.float32)
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    for model, version, labels in (("labelled", "1", LABELS), ("plain", "2", None)):
        expected_y = run_onnx(server.repo.root / model / version / "model.onnx", x)["y"]
        outputs = [httpclient.InferRequestedOutput("y", binary_data=binary, class_count=3),
                   httpclient.InferRequestedOutput("argmax", binary_data=binary)]
        result = client.infer(model, [inp], outputs=outputs)
        got = result.as_numpy("y")
        assert got.shape == (2, 3)
        # tritonclient gives JSON strings as str, binary ones as bytes.
        assert [[v.encode() if isinstance(v, str) else v for v in row] for row in got.tolist()] \
            == top_k(expected_y, 3, labels)
        np.testing.assert_array_equal(result.as_numpy("argmax"), expected_y.argmax(axis=1))
    # K past the number of classes is clamped, as in Triton.
    result = client.infer("plain", [inp], outputs=[httpclient.InferRequestedOutput("y", class_count=50)])
    assert result.as_numpy("y").shape == (2, 4)


def test_classification_over_msgpack(server) -> None:  # type: ignore[no-untyped-def]
    x = np.array([[1.0, 4.0, 2.0, 3.0]], np.float32)
    body = msgpack.packb({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x.tobytes()}],
                          "outputs": [{"name": "y", "parameters": {"classification": 2}}]})
    resp = requests.post(server.url + "/v2/models/labelled/infer", data=body,
                         headers={"Content-Type": "application/msgpack"}, timeout=10)
    assert resp.status_code == 200, resp.text
    out = msgpack.unpackb(resp.content)["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 2]
    y = run_onnx(server.repo.root / "labelled" / "1" / "model.onnx", x)["y"]
    expected = top_k(y, 2, LABELS)[0]
    # BYTES wire form: a 4-byte little-endian length before each element.
    data, items = out["data"], []
    while data:
        n = int.from_bytes(data[:4], "little")
        items.append(data[4:4 + n])
        data = data[4 + n:]
    assert items == expected


@pytest.mark.parametrize("value, needle", [(-1, "got -1"), (True, "boolean"), (2.5, "float"), ("3", "str")])
def test_bad_class_counts_are_400(server, value: object, needle: str) -> None:  # type: ignore[no-untyped-def]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "y", "parameters": {"classification": value}}]}
    resp = requests.post(server.url + "/v2/models/plain/infer", data=json.dumps(body), timeout=10)
    assert resp.status_code == 400, resp.text
    assert "'y'" in resp.json()["error"] and needle in resp.json()["error"]


def test_a_missing_label_file_is_named(server) -> None:  # type: ignore[no-untyped-def]
    rows = requests.get(server.url + "/v2/repository/index", timeout=10).json()
    row = next(r for r in rows if r["name"] == "nolabels")
    assert row["state"] == "UNAVAILABLE"
    assert "outputs[0].label_filename" in row["reason"] and "missing.txt" in row["reason"]


def test_statistics_with_tritonclient(server) -> None:  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    before = client.get_inference_statistics("plain", "2")["model_stats"][0]
    x = np.ones((3, 4), np.float32)
    inp = httpclient.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x)
    for _ in range(5):
        client.infer("plain", [inp], model_version="2")
    after = client.get_inference_statistics("plain", "2")["model_stats"][0]
    assert after["name"] == "plain" and after["version"] == "2"
    assert after["inference_count"] - before["inference_count"] == 15  # samples
    success = after["inference_stats"]["success"]
    assert success["count"] - before["inference_stats"]["success"]["count"] == 5 and success["ns"] > 0
    assert after["inference_stats"]["queue"]["count"] == success["count"]
    assert after["last_inference"] > 0
    both = client.get_inference_statistics("plain")["model_stats"]
    assert [r["version"] for r in both] == ["1", "2"]
    everything = client.get_inference_statistics()["model_stats"]
    assert {(r["name"], r["version"]) for r in everything} >= {("plain", "1"), ("plain", "2"), ("labelled", "1")}
    # pyserve's own form, the core's counters and histograms, stays available.
    raw = requests.get(server.url + "/v2/models/plain/versions/2/stats?format=pyserve", timeout=10).json()
    assert raw["model_stats"][0]["samples_inferred"] == after["inference_count"]
    resp = requests.get(server.url + "/v2/models/plain/stats?format=xml", timeout=10)
    assert resp.status_code == 400 and "format" in resp.json()["error"]
    assert requests.get(server.url + "/v2/models/nope/stats", timeout=10).status_code == 404


def test_server_metadata_advertises_the_extensions(server) -> None:  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    extensions = client.get_server_metadata()["extensions"]
    for name in ("classification", "binary_tensor_data", "model_repository", "statistics", "model_configuration"):
        assert name in extensions
