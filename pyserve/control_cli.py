"""``pyserve model``, ``pyserve alias``, ``pyserve traffic`` and ``pyserve rollout``: model control of a
running server.

Each command is one HTTP call (two for ``traffic set`` without ``--file``: read, then replace) through
:class:`pyserve.client.InferenceClient`; it prints the server's answer (the traffic policy in force,
as JSON) and exits 0, or prints the server's error and exits 2::

    pyserve model unload digits --version 2
    pyserve alias set digits stable 1 --reason "release 1"
    pyserve traffic set digits --weights stable=90,canary=10 --routing-header x-user-id --reason "canary 10%"
    pyserve rollout start digits --candidate 2 --steps 5,25,50,100 --min-duration 60 --min-requests 100

A server that requires a token (docs/security.md) is sent the one in ``--token-file FILE`` or in
``$PYSERVE_TOKEN`` (never a command-line argument, which ``ps`` shows); an ``https://`` server is
verified against ``--cacert FILE`` (default: the system's CAs), and ``--cert``/``--key`` give the
client certificate a server with mutual TLS asks for.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from pyserve.client import InferenceClient, read_token, tls_context
from pyserve.errors import invalid

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_ENV = "PYSERVE_TOKEN"


def weights(text: str) -> dict[str, float]:
    """``--weights``: ``TARGET=PERCENT,...`` (a target is a version number or an alias); "" for none."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        target, sep, value = part.partition("=")
        try:
            if not sep or not target:
                raise ValueError
            percent = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected TARGET=PERCENT,... (1=90,2=10), got {part!r}") from None
        if not math.isfinite(percent):  # JSON has no NaN: the server would be sent null
            raise argparse.ArgumentTypeError(f"{target.strip()}: expected a percentage from 0 to 100, "
                                             f"got {value!r}")
        if target.strip() in out:
            raise argparse.ArgumentTypeError(f"{target.strip()}: given twice")
        out[target.strip()] = percent
    return out


def steps(text: str) -> list[float]:
    """``--steps``: the candidate's percent at each step, ``5,25,50,100``."""
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PERCENT,... (5,25,50,100), got {text!r}") from None


def _limit(text: str) -> float | None:
    """A gate's limit; ``off`` turns the gate off."""
    if text.lower() == "off":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None


def _common(p: argparse.ArgumentParser, reason: bool = False) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    if reason:
        p.add_argument("--reason", default="", help="why: kept in the server's audit log")
    p.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help=f"send the bearer token in FILE (default: ${TOKEN_ENV} when set)")
    p.add_argument("--cacert", type=Path, default=None, metavar="FILE",
                   help="for https:// URLs: verify the server against these CAs (PEM; default: the system's)")
    p.add_argument("--cert", type=Path, default=None, metavar="FILE",
                   help="for https:// URLs: the client certificate (PEM) a server with mutual TLS asks for")
    p.add_argument("--key", type=Path, default=None, metavar="FILE", help="the private key of --cert (PEM)")


def client(args: argparse.Namespace) -> InferenceClient:
    """The client of a control command's ``--url``, token and TLS flags; PyserveError
    (INVALID_ARGUMENT) for a token file or TLS file that cannot be read."""
    token = os.environ.get(TOKEN_ENV) or None
    if args.token_file is not None:
        try:
            token = read_token(args.token_file)
        except ValueError as e:  # names the file (and line) itself; UnicodeDecodeError is one too
            if isinstance(e, UnicodeDecodeError):
                raise invalid(f"--token-file {args.token_file}: not UTF-8 text") from None
            raise invalid(f"--token-file: {e}") from None
        except OSError as e:
            raise invalid(f"--token-file {args.token_file}: {e.strerror or e}") from None
    ssl_context = None
    if args.cacert is not None or args.cert is not None:
        if args.key is not None and args.cert is None:
            raise invalid("--key goes with --cert")
        try:
            ssl_context = tls_context(args.cacert, args.cert, args.key)
        except (OSError, ValueError) as e:
            raise invalid(f"--cacert/--cert/--key: cannot load them: {getattr(e, 'strerror', None) or e}") from None
    try:
        return InferenceClient(args.url, token=token, ssl_context=ssl_context)
    except ValueError as e:
        raise invalid(str(e)) from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Adds ``model``, ``alias`` and ``traffic`` to the ``pyserve`` command's subparsers."""
    model = sub.add_parser("model", help="load or unload a model, or one version of it, on a running server")
    model_sub = model.add_subparsers(dest="action", required=True)
    for action in ("load", "unload"):
        p = model_sub.add_parser(action, help=f"{action} a model (or --version V only)")
        p.add_argument("model")
        p.add_argument("--version", default=None, metavar="V",
                       help=f"{action} only this version (a number or an alias); the others are untouched")
        _common(p)
        p.set_defaults(func=_model)

    alias = sub.add_parser("alias", help="set, move or remove an alias of a model's versions")
    alias_sub = alias.add_subparsers(dest="action", required=True)
    p = alias_sub.add_parser("set", help="set or move ALIAS to VERSION (atomic: no request fails)")
    p.add_argument("model")
    p.add_argument("alias")
    p.add_argument("version", help="a loaded version's number, or another alias")
    _common(p, reason=True)
    p.set_defaults(func=_alias)
    p = alias_sub.add_parser("remove", help="remove ALIAS")
    p.add_argument("model")
    p.add_argument("alias")
    _common(p, reason=True)
    p.set_defaults(func=_alias)

    traffic = sub.add_parser("traffic", help="show or change a model's traffic policy (aliases, weighted split)")
    traffic_sub = traffic.add_subparsers(dest="action", required=True)
    p = traffic_sub.add_parser("show", help="print the traffic policy as JSON")
    p.add_argument("model")
    _common(p)
    p.set_defaults(func=_traffic)
    p = traffic_sub.add_parser(
        "set", help="change the traffic policy: the current one (or --file's) with the flags given applied")
    p.add_argument("model")
    p.add_argument("--file", type=Path, default=None, metavar="PATH",
                   help="start from this JSON policy instead of the server's current one")
    p.add_argument("--weights", type=weights, default=None, metavar="T=P,...",
                   help="the split, in percent summing to 100 (1=90,2=10 or stable=90,canary=10); '' for none")
    p.add_argument("--routing-header", default=None, metavar="NAME",
                   help="the request header holding the routing key; '' for none (the request id)")
    _common(p, reason=True)
    p.set_defaults(func=_traffic)

    rollout = sub.add_parser("rollout", help="progressive delivery: move traffic to a candidate version in "
                             "steps, with automatic analysis and rollback")
    rollout_sub = rollout.add_subparsers(dest="action", required=True)
    p = rollout_sub.add_parser("start", help="start a rollout (the flags given override --file's spec)")
    p.add_argument("model")
    p.add_argument("--file", type=Path, default=None, metavar="PATH", help="the rollout spec as JSON")
    p.add_argument("--candidate", default=None, metavar="V", help="the version to roll out (a number or an alias)")
    p.add_argument("--stable", default=None, metavar="V",
                   help="the stable version (default: the target weighted 100%%, else the alias 'stable')")
    p.add_argument("--steps", type=steps, default=None, metavar="P,...",
                   help="the candidate's percent at each step, increasing (5,25,50,100)")
    p.add_argument("--min-duration", type=float, default=None, metavar="S",
                   help="seconds each step lasts at least (default 60)")
    p.add_argument("--min-requests", type=int, default=None, metavar="N",
                   help="requests the candidate answers in each step at least (default 100)")
    for flag, key, default in (("--max-error-rate", "max_error_rate", "1"), ("--max-p99-ratio", "max_p99_ratio", "1.5"),
                               ("--min-agreement", "min_agreement", "99")):
        p.add_argument(flag, type=_limit, default=argparse.SUPPRESS, dest=key, metavar="X",
                       help=f"gate limit (default {default}); 'off' turns the gate off")
    _common(p, reason=True)
    p.set_defaults(func=_rollout)
    p = rollout_sub.add_parser("status", help="print the rollout's state as JSON (step, weights, gates, history)")
    p.add_argument("model")
    _common(p)
    p.set_defaults(func=_rollout)
    for action, what in (("pause", "hold the rollout at its step (its gates still roll back)"),
                         ("resume", "let a paused rollout promote again"),
                         ("promote", "promote now: to the next step (--full: to 100%%)"),
                         ("abort", "send all the traffic back to stable and end the rollout")):
        p = rollout_sub.add_parser(action, help=what)
        p.add_argument("model")
        if action == "promote":
            p.add_argument("--full", action="store_true", help="the candidate takes all the traffic now")
        _common(p, reason=True)
        p.set_defaults(func=_rollout)


def _print(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc).decode() + "\n")


def _read_json(path: Path, command: str) -> Any:
    """``--file``'s JSON; None (the error printed) when it cannot be read."""
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        print(f"pyserve {command}: --file {path}: {e}", file=sys.stderr)
        return None


def _model(args: argparse.Namespace) -> int:
    with client(args) as c:
        if args.action == "load":
            c.load_model(args.model, args.version)
        else:
            c.unload_model(args.model, args.version)
    return 0


def _alias(args: argparse.Namespace) -> int:
    with client(args) as c:
        if args.action == "set":
            _print(c.set_alias(args.model, args.alias, args.version, args.reason))
        else:
            _print(c.remove_alias(args.model, args.alias, args.reason))
    return 0


def _traffic(args: argparse.Namespace) -> int:
    with client(args) as c:
        if args.action == "show":
            _print(c.traffic_policy(args.model))
            return 0
        if args.file is not None:
            policy = _read_json(args.file, "traffic")
            if policy is None:
                return 2
        else:
            policy = c.traffic_policy(args.model)
        if args.weights is not None:
            policy["weights"] = args.weights
        if args.routing_header is not None:
            policy.pop("routing_header", None)
            if args.routing_header:
                policy["routing_header"] = args.routing_header
        _print(c.set_traffic_policy(args.model, policy, args.reason))
    return 0


def _rollout(args: argparse.Namespace) -> int:
    with client(args) as c:
        if args.action == "status":
            _print(c.rollout(args.model))
            return 0
        if args.action != "start":
            _print(c.rollout_action(args.model, args.action, args.reason, getattr(args, "full", False)))
            return 0
        spec: dict[str, Any] = {}
        if args.file is not None:
            spec = _read_json(args.file, "rollout")
            if spec is None:
                return 2
        for key, value in (("candidate", args.candidate), ("stable", args.stable), ("steps", args.steps),
                           ("min_duration_s", args.min_duration), ("min_requests", args.min_requests)):
            if value is not None:
                spec[key] = value
        gates = {k: getattr(args, k) for k in ("max_error_rate", "max_p99_ratio", "min_agreement") if hasattr(args, k)}
        if gates:
            spec["gates"] = {**spec.get("gates", {}), **gates}
        _print(c.start_rollout(args.model, spec, args.reason))
    return 0
