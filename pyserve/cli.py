"""The ``pyserve`` command: ``serve`` a model repository (or the demo), ``bench`` a server, and control a
running server's models (``model``, ``alias``, ``traffic``, ``rollout``: :mod:`pyserve.control_cli`)."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pyserve import __version__, control_cli
from pyserve.errors import PyserveError, invalid

if TYPE_CHECKING:
    from pyserve.payload_log.settings import PayloadLogSettings
    from pyserve.security import AccessSettings, TlsSettings

LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_PORT = 65535
# Exit status of a start-up refusal (a bad command line, a port in use, a missing extra).
EXIT_REFUSED = 2
EXIT_INTERRUPTED = 130  # the shell's status for a process ended by SIGINT
# Kubernetes' endpoint controllers and kube-proxy take a few seconds to stop routing to a pod that
# is terminating; serving that long after SIGTERM loses no request (docs/scaling.md).
DEFAULT_DRAIN_GRACE_S = 5.0
MAX_WORKERS = 64
# pyserve.config.DEFAULT_MAX_BATCH_SIZE (a test checks they agree), repeated so that the command line
# starts without importing numpy and the core.
DEFAULT_MAX_BATCH_SIZE = 32
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


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer >= ``minimum``, else argparse's usage error naming the flag."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {v}")
        return v

    return parse


def worker_count(text: str) -> int:
    """An argparse ``type=`` for ``--workers``: 1..MAX_WORKERS, or ``auto`` (the CPU cores this
    process may run on)."""
    if text.strip().lower() == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count() or 1))
    try:
        v = int(text)
    except ValueError:
        v = 0
    if not 1 <= v <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected a number of processes in 1..{MAX_WORKERS} or 'auto', "
                                         f"got {text!r}")
    return v


def port_number(text: str) -> int:
    """An argparse ``type=`` for ``--port``: 0..65535, 0 meaning any free port."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if not 0 <= v <= MAX_PORT:
        raise argparse.ArgumentTypeError(
            f"expected a TCP port in 0..{MAX_PORT} (0 = any free port), got {text!r}")
    return v


def seconds(text: str) -> float:
    """An argparse ``type=``: a finite number of seconds >= 0."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return v


def batch_sizes(text: str) -> tuple[int, ...]:
    """An argparse ``type=`` for ``--preferred-batch-sizes``: comma-separated distinct integers >= 1
    (``""`` = none)."""
    if not text.strip():
        return ()
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 1 (e.g. 8,16), got {text!r}")
    if len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"expected distinct sizes, got {text!r}")
    return sizes


def _model_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH.onnx or NAME=PATH.pyserve, got {text!r}")
    return name, Path(path)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model repository over HTTP (KServe v2, msgpack)",
        description="Serve the models of REPO (the built-in demo when neither REPO nor --model is given).",
    )
    p.add_argument("repository", nargs="?", type=Path, help="model repository folder (REPO/<model>/config.toml)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=port_number, default=8000, metavar="PORT",
                   help="TCP port, 0..65535 (default 8000; 0 = any free port, logged at start-up)")
    p.add_argument(
        "--model", action="append", default=[], type=_model_arg, metavar="NAME=PATH",
        help="also serve one ONNX file as model NAME (repeatable), batching from the flags below; or "
             "one .pyserve artifact (pyserve package), which carries its own config.toml",
    )
    p.add_argument("--max-batch-size", type=int_at_least(0), default=None, metavar="N",
                   help="for --model: max samples per batch, >= 0 (0 = no batching; default: "
                        "--default-max-batch-size if the model's first dimension is dynamic, else 0)")
    p.add_argument("--max-queue-delay-us", type=int_at_least(0), default=None, metavar="US",
                   help="for --model: how long a request may wait for others to batch with, >= 0 (default 0)")
    p.add_argument("--preferred-batch-sizes", type=batch_sizes, default=None, metavar="A,B",
                   help="for --model: comma-separated batch sizes to dispatch at once, "
                        "each 1..--max-batch-size (default none)")
    p.add_argument("--max-queue-size", type=int_at_least(0), default=None, metavar="N",
                   help="for --model: queued requests before 503, >= 0 (0 = no limit)")
    p.add_argument("--instance-count", type=int_at_least(1), default=None, metavar="N",
                   help="for --model: batches run at once, >= 1 (default 1)")
    p.add_argument("--intra-op-threads", type=int_at_least(0), default=None, metavar="N",
                   help="for --model: onnxruntime intra-op threads, >= 0 "
                        "(default 1; 0 = onnxruntime's choice)")
    p.add_argument("--default-max-batch-size", type=int_at_least(0), default=None, metavar="N",
                   help="max_batch_size of every model whose config sets none (and of --model without "
                        "--max-batch-size) when the first dimension of its every input and output is "
                        f"dynamic, >= 0 (default {DEFAULT_MAX_BATCH_SIZE}; 0 = such models do not batch)")
    p.add_argument("--max-body-bytes", type=int_at_least(1), default=64 << 20, metavar="N",
                   help="largest request body, >= 1 (default 64 MiB; 413 above)")
    p.add_argument("--no-strict-readiness", action="store_true",
                   help="/v2/health/ready answers 200 once startup finished, even if a model failed to load")
    p.add_argument("--disable-model-control", action="store_true",
                   help="refuse /v2/repository/models/{m}/load and /unload")
    p.add_argument("--no-infer-fast-path", action="store_true",
                   help="serve every infer request by the general path (the fast path serves the "
                        "common request with less Python, with the same answers: docs/core.md)")
    p.add_argument("--shutdown-timeout-s", type=seconds, default=30.0, metavar="S",
                   help="on SIGTERM/SIGINT, how long in-flight requests may take to finish, "
                        ">= 0 (default 30)")
    p.add_argument("--drain-grace-s", type=seconds, default=DEFAULT_DRAIN_GRACE_S, metavar="S",
                   help="on SIGTERM, answer /v2/health/ready 503 at once but keep accepting and serving "
                        "for S seconds (load balancers and Kubernetes endpoints take the server out of "
                        "rotation meanwhile), then stop accepting; >= 0 (default "
                        f"{DEFAULT_DRAIN_GRACE_S:g}; 0 = stop accepting at once; SIGINT or a second "
                        "SIGTERM skips it)")
    p.add_argument("--workers", type=worker_count, default=1, metavar="N",
                   help="server processes sharing the port (SO_REUSEPORT), each with its own "
                        f"scheduler and backends, 1..{MAX_WORKERS} or 'auto' (one per CPU core); "
                        "default 1 (docs/scaling.md)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="default info")
    _add_client_limit_flags(p)
    _add_payload_log_flags(p)
    _add_dashboard_flags(p)
    _add_security_flags(p)
    _add_artifact_flags(p)
    p.set_defaults(func=_serve)


def _add_artifact_flags(p: argparse.ArgumentParser) -> None:
    """How .pyserve artifacts are checked before they serve (docs/artifact.md)."""
    g = p.add_argument_group("artifacts (docs/artifact.md)")
    g.add_argument("--artifact-public-key", type=Path, default=None, metavar="FILE",
                   help="refuse every .pyserve artifact not signed by this Ed25519 public key (PEM)")
    g.add_argument("--artifact-lock-policy", choices=("warn", "refuse"), default="refuse",
                   help="when an artifact's direct dependencies (pylock.toml) differ from the installed "
                        "versions: refuse the model (default) or log a warning and serve it")


def _add_dashboard_flags(p: argparse.ArgumentParser) -> None:
    """The flags of GET /dashboard (docs/dashboard.md)."""
    g = p.add_argument_group("dashboard (docs/dashboard.md)")
    g.add_argument("--disable-dashboard", action="store_true",
                   help="do not serve GET /dashboard (nor sample statistics for it)")
    g.add_argument("--dashboard-interval-s", type=positive_number, default=5.0, metavar="S",
                   help="take a snapshot of every model version's statistics this often, 0.1 to 3600 (default 5): "
                        "the dashboard's resolution and refresh period")
    g.add_argument("--dashboard-history-s", type=positive_number, default=3600.0, metavar="S",
                   help="keep this many seconds of snapshots, >= --dashboard-interval-s, at most 604800 "
                        "(7 days) and 9999 snapshots (default 3600)")


def _add_security_flags(p: argparse.ArgumentParser) -> None:
    """Tokens, TLS and the audit log (docs/security.md). Tokens are never taken on the command line,
    where ``ps`` shows them: from a file, or $PYSERVE_AUTH_TOKENS."""
    g = p.add_argument_group("security (docs/security.md)")
    g.add_argument("--auth-token-file", type=Path, default=None, metavar="FILE",
                   help="bearer tokens, one per line as TOKEN or ID:TOKEN (also $PYSERVE_AUTH_TOKENS, "
                        "comma-separated); model control then needs one; the file is re-read when it "
                        "changes and on SIGHUP")
    g.add_argument("--inference-token-file", type=Path, default=None, metavar="FILE",
                   help="tokens good for inference, metadata, /metrics, /v2/drift and the dashboard, not "
                        "model control (also "
                        "$PYSERVE_INFERENCE_TOKENS); re-read like --auth-token-file")
    g.add_argument("--auth-inference", action="store_true",
                   help="also require a token for inference and metadata (default: open)")
    g.add_argument("--auth-metrics", action="store_true", help="also require a token for /metrics, /v2/drift and the dashboard (default: open)")
    g.add_argument("--allow-unauthenticated-control", action="store_true",
                   help="start with model control on a non-loopback --host without tokens (a trusted network)")
    g.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                   help="serve HTTPS with this certificate chain (PEM; with --tls-key); reloaded when it "
                        "changes and on SIGHUP")
    g.add_argument("--tls-key", type=Path, default=None, metavar="FILE", help="the private key of --tls-cert (PEM)")
    g.add_argument("--tls-client-ca", type=Path, default=None, metavar="FILE",
                   help="ask clients for certificates signed by these CAs (PEM): mutual TLS")
    g.add_argument("--tls-client-auth", choices=("required", "optional"), default=None,
                   help="with --tls-client-ca: refuse clients without a certificate (required, the "
                        "default) or only those with an invalid one (optional)")
    g.add_argument("--audit-log", type=Path, default=None, metavar="FILE",
                   help="append one JSON line per model-control call to FILE (default: "
                        "REPO/.pyserve/audit.jsonl when serving a repository; always logged on pyserve.audit)")


def _security_settings(args: argparse.Namespace) -> tuple[AccessSettings, TlsSettings | None]:
    """The access and TLS settings of the serve flags, $PYSERVE_AUTH_TOKENS and
    $PYSERVE_INFERENCE_TOKENS; PyserveError
    (INVALID_ARGUMENT) for flags that do not go together."""
    from pyserve.security import INFERENCE_TOKENS_ENV, TOKENS_ENV, AccessSettings, TlsSettings

    access = AccessSettings(token_file=args.auth_token_file, env_tokens=os.environ.get(TOKENS_ENV),
                            inference_token_file=args.inference_token_file,
                            env_inference_tokens=os.environ.get(INFERENCE_TOKENS_ENV),
                            inference=args.auth_inference, metrics=args.auth_metrics,
                            allow_unauthenticated_control=args.allow_unauthenticated_control)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise invalid("--tls-cert and --tls-key go together: give both")
    if args.tls_cert is None:
        if args.tls_client_ca is not None or args.tls_client_auth is not None:
            raise invalid("--tls-client-ca and --tls-client-auth need TLS: give --tls-cert and --tls-key")
        return access, None
    if args.tls_client_auth is not None and args.tls_client_ca is None:
        raise invalid("--tls-client-auth needs --tls-client-ca (the CA of the client certificates)")
    client_auth = (args.tls_client_auth or "required") if args.tls_client_ca is not None else "none"
    return access, TlsSettings(args.tls_cert, args.tls_key, args.tls_client_ca, client_auth)


def _add_client_limit_flags(p: argparse.ArgumentParser) -> None:
    """What a slow or hostile client may cost the server (pyserve.server.limits)."""
    g = p.add_argument_group("slow and hostile clients (README: hostile clients)")
    g.add_argument("--header-timeout-s", type=positive_number, default=30.0, metavar="S",
                   help="a request's line and headers must arrive within this, > 0 (default 30; 408 after)")
    g.add_argument("--body-timeout-s", type=seconds, default=60.0, metavar="S",
                   help="a request's body must arrive within this of its headers, >= 0 "
                        "(default 60; 408 after; 0 = no deadline)")
    g.add_argument("--max-connections", type=int_at_least(1), default=None, metavar="N",
                   help="connections open at once; more are closed as soon as accepted, >= 1 (default: "
                        "the open file limit, raised to its hard limit at start, less a quarter of it "
                        "up to 1024)")


def _add_payload_log_flags(p: argparse.ArgumentParser) -> None:
    """The server-wide flags of the payload log (docs/payload-log.md); each model opts in with a
    [payload_log] table in its config.toml."""
    g = p.add_argument_group("payload log (docs/payload-log.md)")
    g.add_argument("--payload-log-dir", type=Path, default=None, metavar="DIR",
                   help="keep the payload log of the models with a [payload_log] table (and of --model "
                        "models) as Parquet files in DIR (default: no files)")
    g.add_argument("--payload-log-rotate-mb", type=positive_number, default=64.0, metavar="MB",
                   help="close a file (making it visible) at this size, > 0 (default 64)")
    g.add_argument("--payload-log-rotate-s", type=positive_number, default=60.0, metavar="S",
                   help="close a file this many seconds after it was opened, > 0 (default 60); what a "
                        "crash can lose")
    g.add_argument("--payload-log-retain-mb", type=positive_number, default=1024.0, metavar="MB",
                   help="delete the oldest files beyond this total size, > 0 (default 1024)")
    g.add_argument("--payload-log-retain-hours", type=positive_number, default=168.0, metavar="H",
                   help="delete files older than this, > 0 (default 168, a week)")
    g.add_argument("--payload-log-queue-size", type=int_at_least(1), default=10_000, metavar="N",
                   help="records waiting for the writer thread before new ones are dropped (counted), "
                        ">= 1 (default 10000)")
    g.add_argument("--payload-log-sink", default=None, metavar="URL",
                   help="also post each record as CloudEvents (KServe's logger form) to this http(s) URL")
    g.add_argument("--payload-log-sink-retries", type=int_at_least(0), default=5, metavar="N",
                   help="retries of a failed post, with exponential backoff, >= 0 (default 5)")
    g.add_argument("--payload-log-sink-namespace", default="", metavar="NS",
                   help="the events' ce-namespace (KServe: the InferenceService's namespace; default empty)")


def positive_number(text: str) -> float:
    """An argparse ``type=``: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return v


def _payload_log_settings(args: argparse.Namespace) -> PayloadLogSettings:
    """The payload log's settings from the serve flags; PyserveError for a bad sink URL or a
    missing extra."""
    from pyserve.payload_log.settings import MIB, PayloadLogSettings

    sink = args.payload_log_sink
    if sink is not None and not sink.lower().startswith(("http://", "https://")):
        raise invalid(f"--payload-log-sink: expected an http:// or https:// URL, got {sink!r}")
    source = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
    settings = PayloadLogSettings(
        log_dir=args.payload_log_dir,
        rotate_bytes=int(args.payload_log_rotate_mb * MIB),
        rotate_s=args.payload_log_rotate_s,
        retain_bytes=int(args.payload_log_retain_mb * MIB),
        retain_s=args.payload_log_retain_hours * 3600,
        queue_size=args.payload_log_queue_size,
        sink_url=sink,
        sink_retries=args.payload_log_sink_retries,
        sink_source=source,
        sink_namespace=args.payload_log_sink_namespace,
    )
    if settings.log_dir is not None:
        from pyserve.payload_log import require_pyarrow

        try:
            require_pyarrow()
        except ImportError as e:
            raise invalid(f"--payload-log-dir: {e}") from None
        try:
            settings.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise invalid(f"--payload-log-dir: cannot create {settings.log_dir}: {e.strerror or e}") from None
    return settings


def _serve(args: argparse.Namespace) -> int:
    # SIGHUP means "reload the token and TLS files" once the server listens; until then (models
    # loading, maybe for minutes) its default action would end the process. Ignored meanwhile: the
    # files are read as the server starts, and watched for changes from then on.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return _serve_ignoring_early_sighup(args)
    finally:
        signal.signal(signal.SIGHUP, previous)


def _serve_ignoring_early_sighup(args: argparse.Namespace) -> int:
    from pyserve.artifact.serving import ArtifactSettings
    from pyserve.repository import SingleModel
    from pyserve.server.app import ServerSettings, run

    repository = args.repository
    if repository is None and not args.model:
        repository = _demo_repository()
        if repository is None:
            return EXIT_REFUSED
    if repository is not None and not Path(repository).is_dir():
        _refuse(f"{repository}: no such model repository folder")
        return EXIT_REFUSED
    given = [f for f, v in _MODEL_FLAGS.items() if getattr(args, v) is not None]
    if given and not args.model:
        _refuse(f"{', '.join(given)}: only for --model models; a repository model takes "
                "its settings from REPO/<model>/config.toml")
        return EXIT_REFUSED
    for name, path in args.model:
        if not path.is_file():
            _refuse(f"--model {name}={path}: no such file")
            return EXIT_REFUSED
    artifacts = [f"{name}={path}" for name, path in args.model if path.suffix == ".pyserve"]
    if given and artifacts:
        _refuse(f"{', '.join(given)}: not for --model {artifacts[0]}: an artifact carries its own config.toml")
        return EXIT_REFUSED
    if args.artifact_public_key is not None and not args.artifact_public_key.is_file():
        _refuse(f"--artifact-public-key {args.artifact_public_key}: no such file")
        return EXIT_REFUSED
    default_max_batch_size = value(args.default_max_batch_size, DEFAULT_MAX_BATCH_SIZE)
    # Without --max-batch-size, a model that can batch gets the default (checked once it is read).
    max_batch_size = value(args.max_batch_size, default_max_batch_size)
    preferred = list(args.preferred_batch_sizes or ())
    too_large = [s for s in preferred if s > max_batch_size]
    if too_large:
        flag = "--max-batch-size" if args.max_batch_size is not None else "--default-max-batch-size"
        _refuse(f"--preferred-batch-sizes: each size must be at most {flag} ({max_batch_size}), "
                f"got {','.join(map(str, too_large))}")
        return EXIT_REFUSED
    overrides = {
        **({"max_batch_size": args.max_batch_size} if args.max_batch_size is not None else {}),
        "instance_count": value(args.instance_count, 1),
        "dynamic_batching": {
            "max_queue_delay_us": value(args.max_queue_delay_us, 0),
            "preferred_batch_sizes": preferred,
            "max_queue_size": value(args.max_queue_size, 0),
        },
        "backend_options": {"intra_op_num_threads": value(args.intra_op_threads, 1)},
    }
    payload_log = _payload_log_settings(args)
    access, tls = _security_settings(args)
    if payload_log.enabled:
        overrides["payload_log"] = {}  # --model models are logged with the defaults of [payload_log]
    singles = tuple(SingleModel(name, path, overrides) for name, path in args.model)
    from pyserve.dashboard.settings import DashboardSettings

    dashboard = DashboardSettings(not args.disable_dashboard, args.dashboard_interval_s, args.dashboard_history_s)
    try:
        dashboard.check()
    except ValueError as e:
        _refuse(str(e))
        return EXIT_REFUSED
    settings = ServerSettings(
        repository=repository,
        models=singles,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        max_connections=args.max_connections,
        strict_readiness=not args.no_strict_readiness,
        model_control=not args.disable_model_control,
        infer_fast_path=not args.no_infer_fast_path,
        shutdown_timeout_s=args.shutdown_timeout_s,
        drain_grace_s=args.drain_grace_s,
        default_max_batch_size=default_max_batch_size,
        payload_log=payload_log,
        dashboard=dashboard,
        access=access,
        tls=tls,
        audit_log=args.audit_log,
        artifacts=ArtifactSettings(args.artifact_public_key, args.artifact_lock_policy),
    )
    try:
        if args.workers > 1:
            from pyserve.workers import supervisor

            return supervisor.run(settings, args.workers, args.log_level)
        run(settings)
    except OSError as e:
        # The server binds its address before it loads any model (pyserve.server.app.serve); a bind
        # error comes out of the event loop's run as an OSError.
        logging.getLogger("pyserve.cli").debug("start-up failed", exc_info=True)
        message = listen_error(e, args.host, args.port)
        if message is None:
            _refuse(f"start-up failed: {e} (--log-level debug shows the traceback)")
            return 1
        _refuse(message)
        return EXIT_REFUSED
    return 0


def _refuse(message: str) -> None:
    print(f"pyserve serve: {message}", file=sys.stderr)


def _demo_repository() -> Path | None:
    """The demo repository (built on first use), or None after saying on stderr why it cannot be."""
    from pyserve.demo import default_cache_dir, demo_repository

    try:
        return demo_repository()
    except ImportError as e:
        cause = e.__cause__ if isinstance(e.__cause__, ImportError) else e
        missing = f" (cannot import {cause.name})" if cause.name else ""
        _refuse("with no REPO and no --model, pyserve serves the built-in demo, which needs "
                f"scikit-learn and skl2onnx{missing}: pip install 'pyserve[demo]' "
                "(from a checkout: pip install -e '.[demo]'), "
                "or serve your own models with REPO or --model NAME=FILE.onnx")
    except OSError as e:
        _refuse(f"cannot build the demo model repository in {default_cache_dir()}: "
                f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}; "
                "set PYSERVE_HOME to a writable folder, or serve your own models with REPO or --model")
    return None


def listen_error(e: OSError, host: str, port: int) -> str | None:
    """One line saying why the server could not listen on ``host:port`` and what to change, or None
    when ``e`` is not an error of opening the listener (an unresolvable host, an address in use or
    not available, a port not permitted)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host or '*'}:{port}"
    if isinstance(e, socket.gaierror):
        return (f"--host {host!r}: cannot resolve the address ({e.strerror}); give an IP address "
                "(127.0.0.1 for this machine only, 0.0.0.0 for all interfaces) "
                "or a name this machine resolves")
    if e.errno == errno.EADDRINUSE:
        return (f"cannot listen on {where}: address already in use; pick another --port (0 = any free port) "
                "or stop the process using it")
    if e.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {where}: address not available (not an address of this machine); "
                "give one of its addresses with --host: 127.0.0.1 for this machine only, "
                "0.0.0.0 for all interfaces")
    if e.errno == errno.EACCES and "bind" in str(e):
        hint = ("ports below 1024 need root or CAP_NET_BIND_SERVICE: pick a --port of 1024 or above"
                if 0 < port < 1024 else "pick another --port or --host")
        return f"cannot listen on {where}: permission denied; {hint}"
    return None


# Subcommands whose flags and body live in a module of their own (its ``add_arguments`` and ``run``):
# (name, module, help, description).
_MODULE_COMMANDS = (
    ("bench", "pyserve.bench.cli",
     "measure a KServe v2 server and size replicas for a load and a latency goal",
     "Load generator in the manner of Triton's perf_analyzer (see docs/bench.md)."),
    ("plan", "pyserve.plan.cli",
     "simulate a load trace against HPA-scaled replicas and size warm pods for the peaks",
     "Replicas over time, SLO misses and requests at risk under the Kubernetes HPA, from a "
     "pyserve bench report (see docs/plan.md)."),
    ("logs", "pyserve.payload_log.cli",
     "query a payload log folder (filters or SQL through DuckDB)",
     "Print, or write as CSV, JSON or Parquet, the records of a payload log folder "
     "(pyserve serve --payload-log-dir), newest first (see docs/payload-log.md)."),
    ("profile", "pyserve.drift.cli",
     "build a model version's drift profile from training data or its golden samples",
     "Describe each feature of the model's inputs (and, with --outputs, of its outputs) in "
     "MODEL_DIR/VERSION/drift_profile.json, the reference of drift detection (see docs/drift.md)."),
    ("package", "pyserve.artifact.cli_package",
     "package a model version (or an MLflow ONNX model) into one verifiable .pyserve file",
     "Write MODEL_DIR's version (config.toml, model files, golden samples, drift profile), a "
     "dependency lock (pylock.toml) and a manifest of sha256 hashes and provenance into one "
     "file, optionally signed with Ed25519 (see docs/artifact.md)."),
    ("verify", "pyserve.artifact.cli_verify",
     "check a .pyserve artifact: hashes, signature, lock against this environment, golden samples",
     "Check every file's sha256, the signature, the dependency lock against the installed "
     "packages, and run the golden samples through the model; exit status 0 when all pass, "
     "1 when one fails (see docs/artifact.md)."),
    ("batch", "pyserve.batch.cli",
     "score a Parquet, CSV, JSON Lines, NPY or NPZ file offline with a model or artifact",
     "Run every row of a file through a model (a model folder, a repository's model, an .onnx file "
     "or an artifact) in-process, by the same core and config as pyserve serve; outputs and failed "
     "rows go to two files (see docs/batch.md)."),
)


def _add_module_commands(sub: argparse._SubParsersAction) -> None:
    """The subcommands of :data:`_MODULE_COMMANDS`."""
    for name, module_name, help, description in _MODULE_COMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help, description=description)
        module.add_arguments(p)
        p.set_defaults(func=module.run)


def make_parser() -> argparse.ArgumentParser:
    """The parser of the ``pyserve`` command and its subcommands (``serve``, ``bench``, ``plan``,
    ``logs``, ``profile``, ``package``, ``verify``, ``batch``, ``model``, ``alias``, ``traffic``)."""
    parser = argparse.ArgumentParser(prog="pyserve", description="pyserve inference server")
    parser.add_argument("--version", action="version", version=f"pyserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_module_commands(sub)
    control_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyserve`` command; its exit status."""
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except PyserveError as e:
        print(f"pyserve {args.command}: {e.message}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:  # Ctrl-C before the server handles signals itself (e.g. demo training)
        print(f"pyserve {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
