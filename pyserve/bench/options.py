"""Options of ``pyserve bench``: parsed once from the command line into a frozen dataclass.

Every check names the flag it is about, so a wrong command line fails before any request is sent.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import urllib.parse
from pathlib import Path
from typing import Literal

PROTOCOLS = ("json", "binary", "msgpack")
DISTRIBUTIONS = ("poisson", "constant")

Mode = Literal["concurrency", "request_rate"]


class OptionError(ValueError):
    """A command-line value that cannot be used; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Everything one ``pyserve bench`` run needs, validated."""

    model: str
    url: str  # base URL with scheme, no trailing slash: "http://host:port"
    model_version: str
    protocol: str
    mode: Mode  # the sweep variable, also the first CSV column
    levels: tuple[float, ...]  # concurrency (ints) or request rates (req/s)
    distribution: str
    shapes: dict[str, tuple[int, ...]]
    batch_size: int
    input_data: str | None
    warmup_s: float
    window_s: float
    stability_pct: float
    max_windows: int
    processes: int
    timeout_s: float
    seed: int
    target_rate: float | None
    p99_slo_ms: float | None
    headroom_pct: float
    csv: str | None
    json: str | None
    raw_csv: str | None
    plot: str | None
    quiet: bool

    @property
    def infer_url(self) -> str:
        """The URL of the model's infer endpoint."""
        return f"{self.model_url}/infer"

    @property
    def model_url(self) -> str:
        """The URL of the model's metadata endpoint."""
        base = f"{self.url}/v2/models/{self.model}"
        return f"{base}/versions/{self.model_version}" if self.model_version else base

    @property
    def metrics_url(self) -> str:
        """Where a pyserve target exports its Prometheus metrics."""
        return f"{self.url}/metrics"


def parse_sweep(text: str, flag: str, integer: bool) -> tuple[float, ...]:
    """Parse a sweep spec in perf_analyzer's form.

    ``START:END:xF`` multiplies by F (``1:64:x2`` = 1, 2, 4 .. 64); ``START:END:STEP`` adds STEP
    (``1:8:1`` = 1 .. 8; STEP defaults to 1); ``A,B,C`` lists levels; ``A`` is a single level.
    """
    text = text.strip()

    def num(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise OptionError(f"{flag}: {s!r} is not a number (in {text!r})") from None
        if not math.isfinite(v) or v <= 0:
            raise OptionError(f"{flag}: levels must be positive, got {s!r}")
        if integer and v != int(v):
            raise OptionError(f"{flag}: levels must be whole numbers, got {s!r}")
        return v

    if "," in text:
        levels = [num(p) for p in text.split(",") if p.strip()]
    elif ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise OptionError(f"{flag}: expected START:END[:STEP|:xFACTOR], got {text!r}")
        start, end = num(parts[0]), num(parts[1])
        if end < start:
            raise OptionError(f"{flag}: END {parts[1]} is below START {parts[0]}")
        step = parts[2].strip() if len(parts) == 3 else "1"
        levels = []
        if step.lower().startswith("x"):
            factor = num(step[1:])
            if factor <= 1:
                raise OptionError(f"{flag}: factor must be above 1, got {step!r}")
            v = start
            while v <= end * (1 + 1e-9):
                levels.append(round(v, 9))
                v *= factor
        else:
            inc = num(step)
            count = int(math.floor((end - start) / inc + 1e-9)) + 1
            levels = [round(start + i * inc, 9) for i in range(count)]
        if len(levels) > 1000:
            raise OptionError(f"{flag}: {text!r} gives {len(levels)} levels; at most 1000")
    else:
        levels = [num(text)]
    if not levels:
        raise OptionError(f"{flag}: no levels in {text!r}")
    if integer:
        levels = [float(int(v)) for v in levels]
    return tuple(levels)


def parse_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse repeated ``--shape NAME:D1,D2`` into {name: dims}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition(":")
        if not sep or not name:
            raise OptionError(f"--shape: expected NAME:D1,D2,..., got {item!r}")
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            raise OptionError(f"--shape: dims of {name!r} must be integers, got {dims!r}") from None
        if any(d <= 0 for d in shape):
            raise OptionError(f"--shape: dims of {name!r} must be positive, got {dims!r}")
        shapes[name] = shape
    return shapes


def normalize_url(url: str) -> str:
    """``HOST:PORT`` or a full http(s) URL -> ``http://HOST:PORT`` without trailing slash."""
    url = url.strip().rstrip("/")
    if not url:
        raise OptionError("-u/--url: empty")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise OptionError(f"-u/--url: only http and https targets, got {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError when not a number in 0..65535
    except ValueError as e:
        raise OptionError(
            f"-u/--url: {e} in {url!r}; expected HOST:PORT (port 1..65535) or an http(s) URL") from None
    if not parts.hostname:
        raise OptionError(f"-u/--url: no host in {url!r}; expected HOST:PORT or an http(s) URL")
    if port == 0:
        raise OptionError(f"-u/--url: port 0 in {url!r}; a server listens on a port in 1..65535")
    return url


def output_path(path: str, flag: str) -> str:
    """``path`` when a file can be written there (its folder exists and is writable), so that a
    measurement is not lost at the end of a run; :class:`OptionError` naming ``flag`` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise OptionError(f"{flag}: {path!r} is a folder; give a file name")
    folder = p.parent
    if not folder.is_dir():
        raise OptionError(f"{flag}: no such folder {str(folder)!r} (for {path!r})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OptionError(f"{flag}: folder {str(folder)!r} is not writable (for {path!r})")
    return path


def _positive(value: float, flag: str, allow_zero: bool = False) -> float:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise OptionError(f"{flag}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Validate parsed arguments into :class:`BenchOptions`; :class:`OptionError` names the flag."""
    if args.concurrency and args.request_rate:
        raise OptionError("--concurrency and --request-rate are different experiments: give one")
    if args.request_rate:
        mode: Mode = "request_rate"
        levels = parse_sweep(args.request_rate, "--request-rate", integer=False)
    else:
        mode = "concurrency"
        levels = parse_sweep(args.concurrency or "1:64:x2", "--concurrency", integer=True)
    if args.protocol not in PROTOCOLS:
        raise OptionError(f"--protocol: one of {', '.join(PROTOCOLS)}, got {args.protocol!r}")
    if args.distribution not in DISTRIBUTIONS:
        raise OptionError(f"--distribution: one of {', '.join(DISTRIBUTIONS)}")
    if args.batch_size < 1:
        raise OptionError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.max_windows < 3:
        raise OptionError(f"--max-windows: at least 3 (stability compares 3 windows), got {args.max_windows}")
    if args.processes < 1:
        raise OptionError(f"--processes: must be >= 1, got {args.processes}")
    if args.target_rate is not None and args.p99_slo_ms is None:
        raise OptionError("--target-rate needs --p99-slo-ms (capacity is the rate within the SLO)")
    if not 0 <= args.headroom_pct < 100:
        raise OptionError(f"--headroom-pct: must be in [0, 100), got {args.headroom_pct}")
    if args.seed < 0:
        raise OptionError(f"--seed: must be >= 0, got {args.seed}")
    if args.input_data and not args.input_data.endswith((".npy", ".npz", ".json")):
        raise OptionError(f"--input-data: expected a .npy, .npz or .json file, got {args.input_data!r}")
    if args.input_data and not os.path.isfile(args.input_data):
        raise OptionError(f"--input-data: no such file: {args.input_data!r}")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise OptionError(f"--plot: the plot is a PNG file, got {args.plot!r}")
    outputs = {"--csv": args.csv, "--json": args.json, "--raw-csv": args.raw_csv, "--plot": args.plot}
    for flag, path in outputs.items():
        if path:
            output_path(path, flag)
    return BenchOptions(
        model=args.model,
        url=normalize_url(args.url),
        model_version=args.model_version or "",
        protocol=args.protocol,
        mode=mode,
        levels=levels,
        distribution=args.distribution,
        shapes=parse_shapes(args.shape),
        batch_size=args.batch_size,
        input_data=args.input_data,
        warmup_s=_positive(args.warmup_s, "--warmup-s", allow_zero=True),
        window_s=_positive(args.window_s, "--window-s"),
        stability_pct=_positive(args.stability_pct, "--stability-pct"),
        max_windows=args.max_windows,
        processes=args.processes,
        timeout_s=_positive(args.timeout_s, "--timeout-s"),
        seed=args.seed,
        target_rate=None if args.target_rate is None else _positive(args.target_rate, "--target-rate"),
        p99_slo_ms=None if args.p99_slo_ms is None else _positive(args.p99_slo_ms, "--p99-slo-ms"),
        headroom_pct=args.headroom_pct,
        csv=args.csv,
        json=args.json,
        raw_csv=args.raw_csv,
        plot=args.plot,
        quiet=args.quiet,
    )
