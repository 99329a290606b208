"""``pyserve package MODEL_DIR -o NAME.pyserve``: the flags and body of the subcommand (docs/artifact.md)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from pyserve.errors import invalid


def _metadata_item(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``pyserve package``."""
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="a repository's model folder (config.toml, version folders) or an MLflow model "
                        "folder (MLmodel with an ONNX flavour)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE.pyserve", help="the artifact to write")
    p.add_argument("--version", type=int, default=None, metavar="N",
                   help="the version folder to package (default: the newest)")
    p.add_argument("--name", default=None,
                   help="the model's name in the artifact (default: MODEL_DIR's folder name)")
    p.add_argument("--training-commit", default="", metavar="SHA",
                   help="the git commit of the training code (provenance)")
    p.add_argument("--training-data", type=Path, action="append", default=[], metavar="FILE",
                   help="a training data file: its sha256 goes in the provenance (repeatable)")
    p.add_argument("--metadata", type=_metadata_item, action="append", default=[], metavar="KEY=VALUE",
                   help="free-form provenance, e.g. accuracy=0.97 (repeatable; strings)")
    p.add_argument("--metadata-file", type=Path, default=None, metavar="FILE.json",
                   help="free-form provenance from a JSON object (metrics.json); --metadata adds to it")
    p.add_argument("--sign-key", type=Path, default=None, metavar="KEY.pem",
                   help="sign the manifest with this Ed25519 private key (PEM; openssl genpkey -algorithm ed25519)")


def _metadata(args: argparse.Namespace) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    if args.metadata_file is not None:
        def no_constant(name: str) -> Any:  # NaN and Infinity are not JSON: the manifest could not hold them
            raise ValueError(f"{name} is not a JSON value")

        try:
            doc = json.loads(args.metadata_file.read_text(encoding="utf-8"), parse_constant=no_constant)
        except (OSError, ValueError) as e:
            raise invalid(f"--metadata-file {args.metadata_file}: not a readable JSON file: {e}") from None
        except RecursionError:
            raise invalid(f"--metadata-file {args.metadata_file}: JSON nested too deeply") from None
        if not isinstance(doc, dict):
            raise invalid(f"--metadata-file {args.metadata_file}: expected a JSON object, got {type(doc).__name__}")
        metadata.update(doc)
    metadata.update(dict(args.metadata))
    return metadata


def run(args: argparse.Namespace) -> int:
    """Packages, prints the artifact's sha256 and members; exit status 0 (errors: PyserveError)."""
    from pyserve.artifact import mlflow
    from pyserve.artifact.pack import PackageOptions, manifest_summary, package

    model_dir: Path = args.model_dir
    if not model_dir.is_dir():
        raise invalid(f"{model_dir}: no such model folder")
    for f in args.training_data:
        if not f.is_file():
            raise invalid(f"--training-data {f}: no such file")
    if args.output.suffix != ".pyserve":
        raise invalid(f"-o {args.output}: expected a file name ending in .pyserve")
    if not args.output.parent.is_dir():
        raise invalid(f"-o {args.output}: the folder {args.output.parent} does not exist")
    metadata = _metadata(args)
    name = args.name or model_dir.resolve().name
    options = dict(version=args.version, training_commit=args.training_commit,
                   training_data=tuple(args.training_data), sign_key=args.sign_key)
    with tempfile.TemporaryDirectory(prefix="pyserve-package-") as tmp:
        if mlflow.is_mlflow_model(model_dir):
            model_dir, imported, mlflow_metadata = mlflow.model_folder(model_dir, name, Path(tmp))
            options.update(imported_from=imported, metadata={**mlflow_metadata, **metadata})
        else:
            options["metadata"] = metadata
            if args.name is not None and args.name != model_dir.resolve().name:
                raise invalid(f"--name {args.name}: a repository model is packaged under its folder's name "
                              f"({model_dir.resolve().name}); serve it under another with --model NAME=FILE")
        sha, manifest = package(model_dir, args.output, PackageOptions(**options))
    signed = " (signed)" if args.sign_key is not None else ""
    print(f"wrote {args.output}{signed}: model {manifest.name} version {manifest.version} "
          f"({manifest.backend}), {len(manifest.files)} files")
    print(manifest_summary(manifest))
    print(f"sha256 {sha}")
    sys.stdout.flush()
    return 0
