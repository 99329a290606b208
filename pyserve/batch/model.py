"""The model a batch job runs: a model folder, a repository folder and a name, an ONNX file or an
artifact, hosted in-process by :class:`~pyserve.service.ModelHost`, exactly as ``pyserve serve``
would host it (the same config.toml, golden samples and traffic policy; nothing to change).

The host is given a repository of one model: a temporary folder holding a link to the model's
folder, so that a batch job over one model of a large repository loads that model only.
"""

from __future__ import annotations

import contextlib
import tempfile
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

from pyserve.errors import PyserveError, invalid
from pyserve.repository import SingleModel
from pyserve.runtime import ModelRunner
from pyserve.service import InferenceService, ModelHost


def is_model_folder(path: Path) -> bool:
    """Whether ``path`` is one model's folder (a config.toml, or version folders 1, 2, ...) rather
    than a repository of model folders."""
    return (path / "config.toml").is_file() or any(p.is_dir() and p.name.isdigit() for p in path.iterdir())


def _folder_name(folder: Path) -> str:
    """The model's name: the ``name`` of its config.toml if it sets one (it must equal the folder's
    name when served from a repository), else the folder's name."""
    config = folder / "config.toml"
    if config.is_file():
        try:
            name = tomllib.loads(config.read_text(encoding="utf-8")).get("name")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise invalid(f"{config}: not TOML: {e}") from None
        if isinstance(name, str) and name:
            return name
    return folder.resolve().name


@contextlib.asynccontextmanager
async def open_model(target: Path, model_name: str | None = None, model_version: str | None = None,
                     public_key: Path | None = None, lock_policy: str = "refuse",
                     default_max_batch_size: int = 32,
                     ) -> AsyncIterator[tuple[InferenceService, ModelRunner]]:
    """The service and the runner of the model ``target`` names, loaded; unloaded on exit.

    ``target``: a model folder; a repository folder with ``model_name``; an ``.onnx`` file (served as
    ``pyserve serve --model NAME=FILE`` would: one instance, one intra-op thread); or an artifact
    file (:mod:`pyserve.artifact`, checked with ``public_key`` when given, its dependency lock under
    ``lock_policy``: refuse or warn). ``model_version``:
    a version number or alias (default: the newest). Raises INVALID_ARGUMENT naming what is wrong
    (no such file, a repository without ``model_name``, ``pyserve.artifact`` missing) and the load's
    error (NOT_FOUND, UNAVAILABLE with the reason) for a model that does not load."""
    target = Path(target)
    with contextlib.ExitStack() as stack:
        single: tuple[SingleModel, ...] = ()
        folder: Path | None = None
        if target.is_dir():
            if is_model_folder(target):
                folder = target
            elif model_name is None:
                models = sorted(p.name for p in target.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
                raise invalid(f"{target} is a model repository: name the model with --model-name "
                              f"(models: {', '.join(models) or 'none'})")
            else:
                folder = target / model_name
                if not folder.is_dir():
                    raise invalid(f"--model-name {model_name}: {target} has no model folder of that name")
        elif target.is_file() and target.suffix.lower() == ".onnx":
            name = model_name or target.stem
            single = (SingleModel(name, target, {"instance_count": 1,
                                                 "backend_options": {"intra_op_num_threads": 1}}),)
        elif target.is_file():
            folder = stack.enter_context(_artifact(target, public_key, lock_policy))
        else:
            raise invalid(f"{target}: no such model folder, repository, ONNX file or artifact")
        root = None
        if folder is not None:
            name = _folder_name(folder) if model_name is None or target.is_file() else model_name
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pyserve-batch-")))
            (root / name).symlink_to(folder.resolve(), target_is_directory=True)
        async with ModelHost(root, single, default_max_batch_size=default_max_batch_size) as host:
            service = InferenceService(host)
            yield service, service.runner(name, model_version)


def _artifact(path: Path, public_key: Path | None, lock_policy: str) -> contextlib.AbstractContextManager[Path]:
    try:
        from pyserve import artifact
    except ImportError:
        raise invalid(f"{path}: a file other than .onnx is read as an artifact, and artifacts need "
                      "pyserve.artifact, which this installation lacks") from None
    if not artifact.is_artifact(path):
        raise invalid(f"{path}: not an ONNX file (.onnx) nor a pyserve artifact")
    try:
        return artifact.open_artifact(path, public_key=public_key, lock_policy=lock_policy)
    except PyserveError:
        raise
    except Exception as e:  # the artifact's own checks (signature, digests) fail in their own words
        raise invalid(f"{path}: cannot open the artifact: {e}") from None
