"""NaN, +inf and -inf through a real ``pyserve serve`` in JSON: stock tritonclient with
``binary_data=False``, and a raw JSON POST as curl sends it, through an identity model.

Triton (rapidjson with ``kParseNanAndInfFlag``) and Python's ``json`` read and write the tokens
``NaN``, ``Infinity`` and ``-Infinity``; a number too large for the tensor's datatype is a 400.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import requests
from conftest import Repo, Server

httpclient = pytest.importorskip("tritonclient.http")

FLOAT_TYPES = ("FP16", "FP32", "FP64")
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def server(serve_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """An identity model ``ident``: ``in_<t>`` -> ``out_<t>`` for t in fp16, fp32, fp64, int32."""
    repo = Repo(tmp_path_factory.mktemp("nonfinite") / "models")
    specs = [(d.lower(), d, [-1, -1]) for d in (*FLOAT_TYPES, "INT32")]
    repo.identity("ident", specs)
    return serve_module([repo.root])


def assert_same_nan(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype, shape and values; NaN where ``want`` has NaN, and each inf with its sign."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got, want)
    assert np.array_equal(got, want, equal_nan=True), (got, want)


def non_finite(datatype: str) -> np.ndarray:
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[datatype]
    return np.array([[NAN, INF, -INF], [1.5, -0.0, -2.25]], dtype)


def post(server: Server, body: bytes) -> requests.Response:
    """A JSON infer request to ``ident`` as curl sends it (-d: form content type)."""
    return requests.post(
        f"{server.url}/v2/models/ident/infer",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )


def test_stock_tritonclient_round_trips_nan_and_signed_infinity(server: Server) -> None:
    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        sent = {d: non_finite(d) for d in FLOAT_TYPES}
        inputs = []
        for datatype, arr in sent.items():
            tensor = httpclient.InferInput(f"in_{datatype.lower()}", list(arr.shape), datatype)
            tensor.set_data_from_numpy(arr, binary_data=False)
            inputs.append(tensor)
        outputs = [httpclient.InferRequestedOutput(f"out_{d.lower()}", binary_data=False) for d in sent]
        inputs.append(httpclient.InferInput("in_int32", [1, 1], "INT32"))
        inputs[-1].set_data_from_numpy(np.array([[3]], np.int32), binary_data=False)
        result = client.infer("ident", inputs, outputs=outputs)
        for datatype, arr in sent.items():
            assert_same_nan(result.as_numpy(f"out_{datatype.lower()}"), arr)
        # The reply is plain JSON with the tokens, as Python's json writes them.
        data = [o["data"] for o in result.get_response()["outputs"]]
        assert all(str(d[:3]) == "[nan, inf, -inf]" for d in data), data
    finally:
        client.close()


def test_raw_json_post_with_tokens_gets_200_and_the_tokens_back(server: Server) -> None:
    body = (
        b'{"inputs": [{"name": "in_fp32", "datatype": "FP32", "shape": [1, 4], '
        b'"data": [NaN, Infinity, -Infinity, 0.5]}, '
        b'{"name": "in_fp16", "datatype": "FP16", "shape": [2, 1], "data": [[-Infinity], [NaN]]}, '
        b'{"name": "in_fp64", "datatype": "FP64", "shape": [1, 1], "data": [1]}, '
        b'{"name": "in_int32", "datatype": "INT32", "shape": [1, 1], "data": [1]}], '
        b'"outputs": [{"name": "out_fp32"}, {"name": "out_fp16"}]}'
    )
    resp = post(server, body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    assert b'"data":[NaN,Infinity,-Infinity,0.5]' in resp.content
    assert b'"data":[-Infinity,NaN]' in resp.content
    outputs = {o["name"]: o for o in json.loads(resp.content)["outputs"]}
    for name, want in (("out_fp32", [NAN, INF, -INF, 0.5]), ("out_fp16", [-INF, NAN])):
        dtype = np.float32 if name == "out_fp32" else np.float16
        assert_same_nan(np.array(outputs[name]["data"], dtype), np.array(want, dtype))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            '{"name": "in_int32", "datatype": "INT32", "shape": [1, 2], "data": [1, NaN]}',
            "input 'in_int32': INT32 data must be integers, got NaN or Infinity",
        ),
        (
            '{"name": "in_fp32", "datatype": "FP32", "shape": [1, 2], "data": [1e39, NaN]}',
            "input 'in_fp32': FP32 cannot hold 1e+39",
        ),
        (
            '{"name": "in_fp16", "datatype": "FP16", "shape": [1, 1], "data": [70000]}',
            "input 'in_fp16': FP16 cannot hold 70000",
        ),
        ('{"name": "in_fp64", "datatype": "FP64", "shape": [1, 1], "data": [nan]}', "not valid JSON"),
    ],
)
def test_non_finite_and_overflow_refusals_are_400(server: Server, entry: str, expected: str) -> None:
    resp = post(server, f'{{"inputs": [{entry}]}}'.encode())
    assert resp.status_code == 400, resp.text
    assert expected in resp.json()["error"]
