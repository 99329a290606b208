"""``pyserve profile``: build a model version's drift profile from training data or golden samples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyserve.errors import invalid

KINDS = ("numerical", "categorical")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``pyserve profile``."""
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="the model's folder in a repository (REPO/NAME, with its config.toml and version folders)")
    p.add_argument("--version", dest="model_version", type=int, default=None, metavar="V",
                   help="the version to profile (default: the newest its version policy serves)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, default=None, metavar="FILE",
                        help="training data: a .parquet, .csv, .npy or .npz file, samples along the first axis")
    source.add_argument("--golden", action="store_true",
                        help="the version's golden samples (VERSION/golden.npz), inputs and expected outputs")
    p.add_argument("--outputs", action="store_true",
                   help="also run the model on the inputs (in-process) and profile its outputs, "
                        "the reference of prediction drift")
    p.add_argument("--columns", action="append", default=[], metavar="INPUT=C1,C2,...",
                   help="the columns of a Parquet/CSV file that make a vector input, in order (repeatable)")
    p.add_argument("--categorical", action="append", default=[], metavar="TENSOR[:FEATURE]",
                   help="profile this tensor (or one feature of it) as categorical (repeatable)")
    p.add_argument("--numerical", action="append", default=[], metavar="TENSOR[:FEATURE]",
                   help="profile this tensor (or one feature of it) as numerical (repeatable)")
    p.add_argument("--max-rows", type=int, default=100_000, metavar="N",
                   help="profile at most N rows, sampled at random with a fixed seed (default 100000)")
    p.add_argument("--output", "-o", type=Path, default=None, metavar="FILE",
                   help="write here instead of MODEL_DIR/VERSION/drift_profile.json")


def _columns(specs: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, cols = spec.partition("=")
        names = [c for c in cols.split(",") if c]
        if not sep or not name or not names:
            raise invalid(f"--columns {spec!r}: expected INPUT=C1,C2,...")
        if len(set(names)) != len(names):
            twice = sorted({c for c in names if names.count(c) > 1})
            raise invalid(f"--columns {spec!r}: column {', '.join(twice)} given more than once")
        out[name] = names
    return out


def run(args: argparse.Namespace) -> int:
    """Runs ``pyserve profile``; its exit status (PyserveError for bad arguments or data)."""
    try:
        from pyserve.drift import require_scipy

        require_scipy()
    except ImportError as e:
        raise invalid(str(e)) from None
    from pyserve.config import load_model_config, version_dirs
    from pyserve.drift import build
    from pyserve.drift.profile import PROFILE_FILE, write_profile

    model_dir: Path = args.model_dir
    if not (model_dir / "config.toml").is_file() and not version_dirs(model_dir):
        raise invalid(f"{model_dir}: not a model folder (expected config.toml and version folders)")
    if args.max_rows < 1:
        raise invalid(f"--max-rows: expected an integer >= 1, got {args.max_rows}")
    config = load_model_config(model_dir)
    served = config.version_policy.select(version_dirs(model_dir))
    version = args.model_version if args.model_version is not None else (served[-1] if served else None)
    if version is None or not (model_dir / str(version)).is_dir():
        raise invalid(f"{model_dir}: no version folder {version if version is not None else 'to profile'}"
                      f" (version folders: {', '.join(map(str, version_dirs(model_dir))) or 'none'})")
    version_dir = model_dir / str(version)
    kinds: dict[str, str] = {}
    tensors = {s.name for s in (*config.inputs, *config.outputs)}
    for kind in KINDS:
        for name in getattr(args, kind):
            if name.partition(":")[0] not in tensors:
                raise invalid(f"--{kind} {name}: the model has no tensor {name.partition(':')[0]!r} "
                              f"(tensors: {', '.join(sorted(tensors))})")
            if name in kinds and kinds[name] != kind:
                raise invalid(f"--{kind} {name}: also given as --{kinds[name]}; a feature is one or the other")
            kinds[name] = kind
    if args.columns and (args.golden or args.data.suffix.lower() in (".npy", ".npz")):
        raise invalid("--columns: only for a Parquet or CSV file (the columns of an NPY/NPZ array or of "
                      "golden samples are not named)")
    if args.golden:
        data = build.golden_data(version_dir, config)
        source = f"{version_dir.name}/golden.npz"
    else:
        data = build.read_data(args.data, config, _columns(args.columns))
        source = args.data.name
    build.sample_rows(data, args.max_rows)
    if args.outputs:
        build.run_model(model_dir, model_dir.resolve().name, version, data, config)
    profile = build.build_profile(config, version, data, source, kinds)
    for name, kind in kinds.items():
        tensor, sep, feature = name.partition(":")
        if sep:
            described = [t for t in profile.tensors if t.tensor == tensor]
            names = [f.name for t in described for f in t.features]
            if feature not in names:
                raise invalid(f"--{kind} {name}: tensor {tensor!r} has no feature {feature!r} "
                              f"(features: {', '.join(names[:20]) or 'none'}{', ...' if len(names) > 20 else ''})")
    out = args.output if args.output is not None else version_dir / PROFILE_FILE
    if not out.parent.is_dir():
        raise invalid(f"--output {out}: no folder {out.parent}")
    try:
        write_profile(profile, out)
    except OSError as e:
        raise invalid(f"--output {out}: cannot write: {e.strerror or e}") from None
    features = sum(len(t.features) for t in profile.tensors)
    described = ", ".join(f"{t.role} {t.tensor} ({len(t.features)} {t.layout})" for t in profile.tensors)
    print(f"{out}: {profile.rows} rows, {features} features: {described}; {out.stat().st_size} bytes",
          file=sys.stdout)
    return 0
