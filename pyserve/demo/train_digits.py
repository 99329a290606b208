"""Train the demo digits classifier and write it as a pyserve model (ONNX + config.toml).

The data are the 8x8 grey digit images that scikit-learn ships (``load_digits``): nothing is
downloaded. Training is deterministic for a given seed and takes well under a second on one core.

Run as a script::

    python -m pyserve.demo.train_digits --out DIR

which writes ``DIR/digits/config.toml``, ``DIR/digits/1/model.onnx``, ``DIR/digits/samples.npz``
(golden held-out samples) and ``DIR/digits/metrics.json``.

scikit-learn and skl2onnx are in the optional extra ``demo``; they are imported only when training.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "digits"
INPUT_NAME = "x"
N_PIXELS = 64
N_CLASSES = 10
TEST_SIZE = 0.25
N_SAMPLES = 16  # golden held-out samples saved next to the model
# The highest ONNX opset skl2onnx may use (it picks the lowest that the operators need): every
# onnxruntime since 1.14 runs opset 17, and a fixed cap keeps the export the same whatever
# skl2onnx's newest tested opset is.
TARGET_OPSET = 17

CONFIG_TOML = f"""\
# Digits classifier (8x8 grey images, 64 pixels 0..16), trained by pyserve.demo.train_digits
backend = "onnxruntime"
max_batch_size = 64

[[inputs]]
name = "{INPUT_NAME}"
datatype = "FP32"
shape = [{N_PIXELS}]

# One class label per sample: a scalar, so its shape without the batch dimension is empty.
[[outputs]]
name = "label"
datatype = "INT64"
shape = []

[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [{N_CLASSES}]

[dynamic_batching]
max_queue_delay_us = 1000
max_queue_size = 4096

[onnxruntime]
intra_op_num_threads = 1
inter_op_num_threads = 1
"""

_MISSING_EXTRA = (
    "training the demo digits model needs scikit-learn and skl2onnx: pip install 'pyserve[demo]'"
)


def _version(dist: str) -> str:
    """The installed version of a distribution, or "unknown"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _fit(seed: int) -> tuple[Any, np.ndarray, np.ndarray, int]:
    """Fit the pipeline on a stratified split; returns (pipeline, x_test, y_test, n_train)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:
        raise ImportError(_MISSING_EXTRA) from exc

    x, y = load_digits(return_X_y=True)
    # Train on float32, the dtype the served model takes, so ONNX and sklearn see the same numbers.
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=seed
    )
    # lbfgs is deterministic; max_iter high enough that it converges without a warning.
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(max_iter=2000, random_state=seed)),
        ]
    )
    pipeline.fit(x_train, y_train)
    return pipeline, x_test, y_test.astype(np.int64), len(x_train)


def _to_onnx(pipeline: Any) -> bytes:
    """Export the pipeline: input ``x`` FP32 [batch, 64]; outputs ``label``, ``probabilities``."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    except ImportError as exc:
        raise ImportError(_MISSING_EXTRA) from exc

    model = convert_sklearn(
        pipeline,
        name="pyserve-demo-digits",
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_PIXELS]))],
        # final_types fixes the output names whatever skl2onnx would call them.
        final_types=[
            ("label", Int64TensorType([None])),
            ("probabilities", FloatTensorType([None, N_CLASSES])),
        ],
        # zipmap=False: probabilities as a [batch, 10] tensor rather than a sequence of maps.
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    # skl2onnx lists the opset imports in set order, which varies between runs; sort them so that
    # the same data and seed give the same bytes.
    opsets = sorted(model.opset_import, key=lambda opset: opset.domain)
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model.SerializeToString()


def _onnx_accuracy(onnx_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float | None:
    """Accuracy of the exported model under onnxruntime (as served); None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    label = session.run(["label"], {INPUT_NAME: x})[0]
    return float(np.mean(label == y))


def train_digits(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Train the digits classifier and write the ``digits`` model under ``out_dir``.

    Writes ``out_dir/digits/{config.toml, 1/model.onnx, samples.npz, metrics.json}`` and returns the
    metrics: held-out ``accuracy`` (sklearn), ``onnx_accuracy`` (onnxruntime, or None), ``seed``,
    split sizes, ``target_opset`` and library ``versions``, plus ``model_dir`` and ``onnx_path``.
    Raises ImportError naming ``pyserve[demo]`` when scikit-learn or skl2onnx is missing.
    """
    pipeline, x_test, y_test, n_train = _fit(seed)
    accuracy = float(pipeline.score(x_test, y_test))
    onnx_bytes = _to_onnx(pipeline)

    model_dir = Path(out_dir) / MODEL_NAME
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = version_dir / "model.onnx"
    onnx_path.write_bytes(onnx_bytes)
    (model_dir / "config.toml").write_text(CONFIG_TOML, encoding="utf-8")
    golden_x = np.ascontiguousarray(x_test[:N_SAMPLES], dtype=np.float32)
    # Golden samples: the true labels, and what the trained model answers (a served model must
    # answer the same; it is not always right).
    np.savez(
        model_dir / "samples.npz",
        x=golden_x,
        label=y_test[:N_SAMPLES],
        predicted_label=pipeline.predict(golden_x).astype(np.int64),
        probabilities=pipeline.predict_proba(golden_x).astype(np.float32),
    )

    metrics: dict[str, Any] = {
        "accuracy": accuracy,
        "onnx_accuracy": _onnx_accuracy(onnx_bytes, x_test, y_test),
        "seed": seed,
        "test_size": TEST_SIZE,
        "n_train": n_train,
        "n_test": len(y_test),
        "target_opset": TARGET_OPSET,
        "versions": {
            "scikit-learn": _version("scikit-learn"),
            "skl2onnx": _version("skl2onnx"),
            "onnx": _version("onnx"),
            "numpy": _version("numpy"),
        },
    }
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return {**metrics, "model_dir": model_dir, "onnx_path": onnx_path}


def main(argv: list[str] | None = None) -> int:
    """Command line: train into ``--out`` and print the held-out accuracy."""
    parser = argparse.ArgumentParser(
        prog="python -m pyserve.demo.train_digits",
        description="Train the demo digits classifier and write it as a pyserve model repository.",
    )
    parser.add_argument("--out", type=Path, required=True, help="model repository folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    args = parser.parse_args(argv)
    try:
        result = train_digits(args.out, seed=args.seed)
    except ImportError as exc:
        parser.exit(2, f"error: {exc}\n")
    onnx_accuracy = result["onnx_accuracy"]
    served = "not checked" if onnx_accuracy is None else f"{onnx_accuracy:.4f}"
    print(f"held-out accuracy: {result['accuracy']:.4f} (exported ONNX model: {served})")
    print(f"wrote {result['model_dir']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
