"""Importing an MLflow model (the ``MLmodel`` format) whose model is ONNX, without MLflow installed.

An MLflow model folder holds ``MLmodel``, a YAML file naming the model's *flavors*. Two mean ONNX
(MLflow's ``mlflow/onnx/__init__.py`` writes both):

- ``flavors.onnx``, whose ``data`` names the ONNX file (``model.onnx``);
- ``flavors.python_function`` with ``loader_module: mlflow.onnx``, whose ``data`` names it too.

:func:`model_folder` builds a repository model folder from it (``config.toml`` for the onnxruntime
backend, ``1/model.onnx``); the provenance keeps MLflow's ``run_id``, ``model_uuid``,
``mlflow_version``, ``utc_time_created`` and ``artifact_path``, and the model's ``metadata`` table.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pyserve.errors import invalid

MLMODEL = "MLmodel"
MAX_MLMODEL_BYTES = 1 << 20
PROVENANCE_KEYS = ("run_id", "model_uuid", "mlflow_version", "utc_time_created", "artifact_path")


def is_mlflow_model(path: Path) -> bool:
    """Whether ``path`` is a folder with an ``MLmodel`` file."""
    return (Path(path) / MLMODEL).is_file()


def read_mlmodel(model_dir: Path) -> dict[str, Any]:
    """The ``MLmodel`` document of ``model_dir`` (YAML, read with ``yaml.safe_load``: no object
    constructors); INVALID_ARGUMENT naming the file when it is not a mapping with ``flavors``."""
    try:
        import yaml
    except ImportError as e:
        raise invalid("reading an MLflow MLmodel file needs PyYAML: pip install 'pyserve[artifact]'") from e
    path = Path(model_dir) / MLMODEL
    data = path.read_bytes()
    if len(data) > MAX_MLMODEL_BYTES:
        raise invalid(f"{path}: {len(data)} bytes, more than an MLmodel file may hold ({MAX_MLMODEL_BYTES})")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise invalid(f"{path}: not YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        raise invalid(f"{path}: expected a mapping with a 'flavors' mapping (MLflow's MLmodel format)")
    return doc


def onnx_file(model_dir: Path, doc: dict[str, Any]) -> Path:
    """The ONNX file the MLmodel's ``onnx`` flavour (or its ``python_function`` flavour loaded by
    ``mlflow.onnx``) names; INVALID_ARGUMENT saying which flavours were found when neither is there."""
    flavors = doc["flavors"]
    where = Path(model_dir) / MLMODEL
    onnx = flavors.get("onnx")
    pyfunc = flavors.get("python_function")
    if isinstance(onnx, dict) and isinstance(onnx.get("data"), str):
        data = onnx["data"]
    elif isinstance(pyfunc, dict) and pyfunc.get("loader_module") == "mlflow.onnx" and isinstance(pyfunc.get("data"), str):
        data = pyfunc["data"]
    else:
        raise invalid(f"{where}: no ONNX model: expected flavors.onnx.data, or flavors.python_function with "
                      f"loader_module mlflow.onnx; found flavors {', '.join(map(str, flavors)) or 'none'}")
    path = (Path(model_dir) / data)
    if ".." in Path(data).parts or Path(data).is_absolute():
        raise invalid(f"{where}: flavors: data {data!r}: expected a file inside the model folder")
    if not path.is_file():
        raise invalid(f"{where}: flavors: data {data!r}: no such file {path}")
    return path


def model_folder(model_dir: Path, name: str, dest: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Builds ``dest/name`` (config.toml for onnxruntime, ``1/model.onnx``) from the MLflow model
    ``model_dir``; returns the folder, the import's provenance (``format: mlflow`` and MLflow's ids) and
    the MLmodel's ``metadata`` table ({} when none)."""
    doc = read_mlmodel(model_dir)
    source = onnx_file(model_dir, doc)
    folder = Path(dest) / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.toml").write_text('backend = "onnxruntime"\n')
    shutil.copyfile(source, folder / "1" / "model.onnx")
    shutil.copystat(source, folder / "1" / "model.onnx")  # its mtime stands for the model's age
    imported = {"format": "mlflow", **{k: str(doc[k]) for k in PROVENANCE_KEYS if doc.get(k) is not None}}
    metadata = doc.get("metadata")
    return folder, imported, dict(metadata) if isinstance(metadata, dict) else {}
