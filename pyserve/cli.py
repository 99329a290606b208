"""The ``pyserve`` command: ``serve`` a model repository (or the demo), ``bench`` a server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pyserve import __version__
from pyserve.errors import PyserveError

LOG_LEVELS = ("debug", "info", "warning", "error")
# The flags that configure --model models (flag -> argparse dest).
_MODEL_FLAGS = {
    "--max-batch-size": "max_batch_size",
    "--max-queue-delay-us": "max_queue_delay_us",
    "--preferred-batch-sizes": "preferred_batch_sizes",
    "--max-queue-size": "max_queue_size",
    "--instance-count": "instance_count",
    "--intra-op-threads": "intra_op_threads",
}


def value(v: int | None, default: int) -> int:
    """``v``, or ``default`` when the flag was not given."""
    return default if v is None else v


def _model_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH.onnx, got {text!r}")
    return name, Path(path)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model repository over HTTP (KServe v2, msgpack)",
        description="Serve the models of REPO (the built-in demo when neither REPO nor --model is given).",
    )
    p.add_argument("repository", nargs="?", type=Path, help="model repository folder (REPO/<model>/config.toml)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--model", action="append", default=[], type=_model_arg, metavar="NAME=PATH",
        help="also serve one ONNX file as model NAME (repeatable); batching from the flags below",
    )
    p.add_argument("--max-batch-size", type=int, default=None,
                   help="for --model: max samples per batch (0 = no batching; default 0)")
    p.add_argument("--max-queue-delay-us", type=int, default=None,
                   help="for --model: how long a request may wait for others to batch with (default 0)")
    p.add_argument("--preferred-batch-sizes", default=None,
                   help="for --model: comma-separated batch sizes to dispatch at once (default none)")
    p.add_argument("--max-queue-size", type=int, default=None, help="for --model: queued requests before 503 (0 = no limit)")
    p.add_argument("--instance-count", type=int, default=None, help="for --model: batches run at once (default 1)")
    p.add_argument("--intra-op-threads", type=int, default=None,
                   help="for --model: onnxruntime intra-op threads (default 1; 0 = onnxruntime's choice)")
    p.add_argument("--max-body-bytes", type=int, default=64 << 20, help="largest request body (default 64 MiB; 413 above)")
    p.add_argument("--no-strict-readiness", action="store_true",
                   help="/v2/health/ready answers 200 once startup finished, even if a model failed to load")
    p.add_argument("--disable-model-control", action="store_true",
                   help="refuse /v2/repository/models/{m}/load and /unload")
    p.add_argument("--shutdown-timeout-s", type=float, default=30.0,
                   help="on SIGTERM/SIGINT, how long in-flight requests may take to finish (default 30)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="default info")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from pyserve.repository import SingleModel
    from pyserve.server.app import ServerSettings, run

    repository = args.repository
    if repository is None and not args.model:
        from pyserve.demo import demo_repository

        repository = demo_repository()
    if repository is not None and not Path(repository).is_dir():
        print(f"pyserve serve: {repository}: no such model repository folder", file=sys.stderr)
        return 2
    given = [f for f, v in _MODEL_FLAGS.items() if getattr(args, v) is not None]
    if given and not args.model:
        print(f"pyserve serve: {', '.join(given)}: only for --model models; a repository model takes "
              "its settings from REPO/<model>/config.toml", file=sys.stderr)
        return 2
    for name, path in args.model:
        if not path.is_file():
            print(f"pyserve serve: --model {name}={path}: no such file", file=sys.stderr)
            return 2
    try:
        preferred = [int(s) for s in (args.preferred_batch_sizes or "").split(",") if s.strip()]
    except ValueError:
        print(f"pyserve serve: --preferred-batch-sizes: expected comma-separated integers, got "
              f"{args.preferred_batch_sizes!r}", file=sys.stderr)
        return 2
    overrides = {
        "max_batch_size": value(args.max_batch_size, 0),
        "instance_count": value(args.instance_count, 1),
        "dynamic_batching": {
            "max_queue_delay_us": value(args.max_queue_delay_us, 0),
            "preferred_batch_sizes": preferred,
            "max_queue_size": value(args.max_queue_size, 0),
        },
        "backend_options": {"intra_op_num_threads": value(args.intra_op_threads, 1)},
    }
    singles = tuple(SingleModel(name, path, overrides) for name, path in args.model)
    settings = ServerSettings(
        repository=repository,
        models=singles,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        strict_readiness=not args.no_strict_readiness,
        model_control=not args.disable_model_control,
        shutdown_timeout_s=args.shutdown_timeout_s,
    )
    run(settings)
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from pyserve.bench import cli as bench_cli

    p = sub.add_parser(
        "bench",
        help="measure a KServe v2 server and size replicas for a load and a latency goal",
        description="Load generator in the manner of Triton's perf_analyzer (see docs/bench.md).",
    )
    bench_cli.add_arguments(p)
    p.set_defaults(func=bench_cli.run)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyserve`` command."""
    parser = argparse.ArgumentParser(prog="pyserve", description="pyserve inference server")
    parser.add_argument("--version", action="version", version=f"pyserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_bench(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except PyserveError as e:
        print(f"pyserve {args.command}: {e.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
