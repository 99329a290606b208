"""Where models come from: a repository folder, single files given on the command line.

A source answers three questions and keeps no state per name it is asked about: which models it has
(:meth:`names`), whether it has one (:meth:`has`), and what one is (:meth:`read`: its config and the
folders of the versions to serve). Every name reaches a source through :func:`check_model_name`
first, so no request can make a source read outside its folder.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyserve.artifact.read import SUFFIX
from pyserve.artifact.serving import ArtifactCache, ArtifactSettings, artifact_config, version_artifact
from pyserve.backends import registry as backends
from pyserve.config import (
    DEFAULT_MAX_BATCH_SIZE,
    ModelConfig,
    config_from_onnx,
    load_model_config,
    version_dirs,
)
from pyserve.errors import PyserveError, invalid, not_found

MAX_MODEL_NAME_LENGTH = 255  # bytes of UTF-8: a file name on every common file system


def _shown(name: str) -> str:
    """``name`` quoted for a message: printable ASCII as is (a backslash too, not doubled as by
    ``ascii``), any other character escaped (``\\x00``, ``\\u00e9``)."""
    return "'" + "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in name) + "'"


def check_model_name(name: str) -> str:
    """``name`` if it can name a model; PyserveError(INVALID_ARGUMENT) saying why not.

    A model name is a folder name of the repository that startup would serve: 1 to 255 bytes of
    UTF-8, not ``.`` or ``..``, no ``/``, ``\\`` or control character, and not starting with ``.`` or
    ``_`` (startup skips such folders). Checked before any file is touched."""
    if not isinstance(name, str) or not name:
        raise invalid("model name: expected a non-empty name")
    shown = _shown(name[:80]) + ("..." if len(name) > 80 else "")
    if name in (".", ".."):
        raise invalid(f"model name {shown}: '.' and '..' are not model names")
    if "/" in name or "\\" in name:
        raise invalid(f"model name {shown}: a model name has no path separator ('/' or '\\')")
    if name[0] in "._":
        raise invalid(f"model name {shown}: names starting with '.' or '_' are not served "
                      "(such folders of the repository are skipped)")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise invalid(f"model name {shown}: a model name has no control characters")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_MODEL_NAME_LENGTH:
        raise invalid(f"model name {shown}: longer than {MAX_MODEL_NAME_LENGTH} bytes")
    return name


class FolderSource:
    """The models of a repository folder: ``ROOT/<model>/config.toml`` and numbered version folders.

    ``default_max_batch_size``: the max_batch_size of a model whose config sets none and that can batch
    (see :func:`pyserve.config.load_model_config`)."""

    def __init__(self, root: Path, default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 artifacts: ArtifactCache | None = None) -> None:
        self.root = Path(root)
        self.default_max_batch_size = default_max_batch_size
        self.artifacts = artifacts or ArtifactCache()

    def _artifacts(self, model_dir: Path) -> dict[int, Path]:
        """Version -> artifact file, for a model folder whose version folders hold ``.pyserve``
        artifacts (pyserve.artifact.serving); {} for any other folder. INVALID_ARGUMENT for a folder
        that mixes them with config.toml or with version folders of plain model files."""
        found = {v: version_artifact(model_dir / str(v)) for v in version_dirs(model_dir)}
        artifacts = {v: p for v, p in found.items() if p is not None}
        if not artifacts:
            return {}
        if (model_dir / "config.toml").is_file():
            raise invalid(f"{model_dir}: version folders holding artifacts ({artifacts[min(artifacts)]}) take "
                          f"their config from the artifact: remove {model_dir / 'config.toml'}")
        plain = sorted(v for v, p in found.items() if p is None)
        if plain:
            raise invalid(f"{model_dir}: version folders {', '.join(map(str, plain))} hold no .pyserve artifact "
                          f"while {', '.join(map(str, sorted(artifacts)))} do: serve one kind per model")
        return artifacts

    def _read_artifacts(self, name: str, artifacts: dict[int, Path],
                        override: Mapping[str, Any] | None) -> tuple[ModelConfig, dict[int, Path]]:
        """The config (the newest artifact's) and the unpacked version folders the policy serves."""
        newest = self.artifacts.open(artifacts[max(artifacts)], name)
        config = artifact_config(newest, override, self.default_max_batch_size)
        selected = config.version_policy.select(sorted(artifacts))
        return config, {v: self.artifacts.open(artifacts[v], name).version_dir for v in selected}

    def names(self) -> set[str]:
        """The model folders of the repository (hidden and ``_`` folders skipped)."""
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}

    def has(self, name: str) -> bool:
        """Whether ``name`` (already checked by :func:`check_model_name`) is a model folder."""
        return (self.root / name).is_dir()

    def read(self, name: str, override: Mapping[str, Any] | None = None) -> tuple[ModelConfig, dict[int, Path]]:
        """The config of model ``name`` and the folders of the versions its policy serves.

        ``override`` replaces config.toml (a load request's config). NOT_FOUND for an unknown model;
        ConfigError (INVALID_ARGUMENT) for a wrong config or no version to serve."""
        model_dir = self.root / name
        if not model_dir.is_dir():
            raise not_found(f"unknown model '{name}'")
        artifacts = self._artifacts(model_dir)
        if artifacts:
            return self._read_artifacts(name, artifacts, override)
        source = f"{model_dir}: the load request's config" if override is not None else ""
        config = load_model_config(model_dir, override, source, self.default_max_batch_size)
        selected = config.version_policy.select(version_dirs(model_dir))
        if not selected:
            if backends.get(config.backend).needs_model_file:
                raise invalid(f"{model_dir}: no version folder to serve "
                              f"(expected {model_dir}/1/{config.model_filename})")
            selected = [1]  # a backend with no model file serves version 1 without a folder
        return config, {v: model_dir / str(v) for v in selected}

    def model_dir(self, name: str) -> Path | None:
        """The folder of model ``name``: where its config.toml, versions and traffic policy are."""
        return self.root / name

    def version_dir(self, name: str, config: ModelConfig, version: int) -> Path:
        """The folder of one version of model ``name``, whatever its version policy; NOT_FOUND when
        the repository has no such folder (a backend with no model file serves version 1 without)."""
        path = self.root / name / str(version)
        artifact = self._artifacts(self.root / name).get(version)
        if artifact is not None:
            return self.artifacts.open(artifact, name).version_dir
        if path.is_dir() or (version == 1 and not backends.get(config.backend).needs_model_file):
            return path
        available = ", ".join(map(str, version_dirs(self.root / name))) or "none"
        raise not_found(f"model '{name}' has no version folder '{version}' (version folders: {available})")


@dataclass(frozen=True)
class SingleModel:
    """A model given as one file (``--model NAME=PATH``): an ONNX file, with the batching knobs of the
    CLI, or a ``.pyserve`` artifact, which carries its own config.toml (the knobs are not applied)."""

    name: str
    path: Path
    overrides: dict = field(default_factory=dict, hash=False)

    def config(self, default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> ModelConfig:
        """The model's config, read off the ONNX file with the CLI's knobs applied; without a
        ``max_batch_size`` knob, batching with ``default_max_batch_size`` when the model allows it."""
        overrides = dict(self.overrides)
        max_batch_size = overrides.pop("max_batch_size", None)
        return config_from_onnx(self.name, self.path, max_batch_size=max_batch_size,
                                default_max_batch_size=default_max_batch_size, **overrides)


class FileSource:
    """Models given one file each (``--model NAME=PATH``): an ONNX file served as version 1, an
    artifact as the version it was packaged as."""

    def __init__(self, models: Iterable[SingleModel],
                 default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 artifacts: ArtifactCache | None = None) -> None:
        self.models = {m.name: m for m in models}
        self.default_max_batch_size = default_max_batch_size
        self.artifacts = artifacts or ArtifactCache()

    def names(self) -> set[str]:
        """The names given on the command line."""
        return set(self.models)

    def has(self, name: str) -> bool:
        """Whether ``name`` was given on the command line."""
        return name in self.models

    def read(self, name: str, override: Mapping[str, Any] | None = None) -> tuple[ModelConfig, dict[int, Path]]:
        """The config of model ``name`` and its one version folder (the file's folder)."""
        model = self.models.get(name)
        if model is None:
            raise not_found(f"unknown model '{name}'")
        if override is not None:
            raise invalid(f"model '{name}' is served from one file (--model): a load request cannot "
                          "replace its config; restart with other flags")
        if model.path.suffix == SUFFIX:
            extracted = self.artifacts.open(model.path, name)
            config = artifact_config(extracted, None, self.default_max_batch_size)
            return config, {extracted.manifest.version: extracted.version_dir}
        return model.config(self.default_max_batch_size), {1: model.path.parent}

    def model_dir(self, name: str) -> Path | None:
        """None: a model given as one file has no folder of its own."""
        return None

    def version_dir(self, name: str, config: ModelConfig, version: int) -> Path:
        """The file's folder for version 1 (an artifact's unpacked version folder for the version it was
        packaged as); NOT_FOUND for any other version."""
        model = self.models[name]
        if model.path.suffix == SUFFIX:
            extracted = self.artifacts.open(model.path, name)
            if version != extracted.manifest.version:
                raise not_found(f"model '{name}' is served from one artifact (--model): it has version "
                                f"{extracted.manifest.version} only")
            return extracted.version_dir
        if version != 1:
            raise not_found(f"model '{name}' is served from one file (--model): it has version 1 only")
        return model.path.parent


class ModelSources:
    """Every source of a server, the command line's single files first (they win a name clash).

    ``default_max_batch_size``: the server's default of max_batch_size (``--default-max-batch-size``);
    ``artifacts``: how ``.pyserve`` artifacts are checked (:class:`pyserve.artifact.serving.ArtifactSettings`).
    :meth:`close` deletes the artifacts unpacked for serving."""

    def __init__(self, root: Path | None = None, single_models: Iterable[SingleModel] = (),
                 default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 artifacts: ArtifactSettings | None = None) -> None:
        self.artifacts = ArtifactCache(artifacts)
        self.sources: list[FileSource | FolderSource] = [
            FileSource(single_models, default_max_batch_size, self.artifacts)]
        if root is not None:
            self.sources.append(FolderSource(Path(root), default_max_batch_size, self.artifacts))

    def close(self) -> None:
        """Deletes the artifacts unpacked for serving (server shutdown)."""
        self.artifacts.close()

    def names(self) -> list[str]:
        """Every model name of every source, sorted."""
        out: set[str] = set()
        for source in self.sources:
            out |= source.names()
        return sorted(out)

    def has(self, name: str) -> bool:
        """Whether a source has model ``name``; False for names that cannot be models."""
        try:
            check_model_name(name)
        except PyserveError:
            return False
        return any(s.has(name) for s in self.sources)

    def read(self, name: str, override: Mapping[str, Any] | None = None) -> tuple[ModelConfig, dict[int, Path]]:
        """The config and version folders of ``name`` from the first source that has it.

        INVALID_ARGUMENT for a name that cannot be a model (nothing is read), NOT_FOUND when no
        source has it."""
        check_model_name(name)
        for source in self.sources:
            if source.has(name):
                return source.read(name, override)
        raise not_found(f"unknown model '{name}'")

    def model_dir(self, name: str) -> Path | None:
        """The folder of model ``name`` in the first source that has it; None for a model given as one
        file (``--model``). INVALID_ARGUMENT / NOT_FOUND as :meth:`read`."""
        check_model_name(name)
        for source in self.sources:
            if source.has(name):
                return source.model_dir(name)
        raise not_found(f"unknown model '{name}'")

    def version_dir(self, name: str, config: ModelConfig, version: int) -> Path:
        """The folder of one version of ``name`` (checked as :meth:`read`), whatever its version policy."""
        check_model_name(name)
        for source in self.sources:
            if source.has(name):
                return source.version_dir(name, config, version)
        raise not_found(f"unknown model '{name}'")
