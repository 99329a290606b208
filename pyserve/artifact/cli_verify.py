"""``pyserve verify NAME.pyserve``: the flags and body of the subcommand (docs/artifact.md).

Checks, in order, and stops at the first that fails: the archive and every member's sha256, the
signature (required with ``--public-key``), the lock against the installed packages (a table of
package, locked, installed), and the golden samples run through the model's real backend (a
:class:`pyserve.service.ModelHost` loading the unpacked model, which runs them before it serves).
Exit status 0: every check passed; 1: one failed (the message names the member or the sample).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pyserve.errors import PyserveError

EXIT_FAILED = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``pyserve verify``."""
    p.add_argument("artifact", type=Path, metavar="FILE.pyserve", help="the artifact to check")
    p.add_argument("--public-key", type=Path, default=None, metavar="PUB.pem",
                   help="require a valid signature by this Ed25519 public key (PEM)")
    p.add_argument("--lock-policy", choices=("warn", "refuse"), default="refuse",
                   help="a direct dependency whose installed version differs from the lock fails the check "
                        "(refuse, the default) or is only reported (warn)")
    p.add_argument("--no-golden", action="store_true", help="do not load the model and run its golden samples")


def _say(line: str) -> None:
    print(line)
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Runs the checks, printing each; 0 when all pass, 1 when one fails."""
    from pyserve.artifact import open_extracted
    from pyserve.artifact import lock as locks
    from pyserve.artifact.manifest import LOCK, MODEL_PREFIX
    from pyserve.config import ConfigError, load_model_config

    path: Path = args.artifact
    try:
        # The lock is checked here rather than by open_extracted, to print its table either way.
        with open_extracted(path, public_key=args.public_key, lock_policy=None) as extracted:
            m = extracted.manifest
            _say(f"artifact {path}: model {m.name} version {m.version} ({m.backend}), "
                 f"sha256 {extracted.sha256}")
            _say(f"files: {len(m.files)} of {len(m.files)} match their sha256 in the manifest")
            if extracted.signed_by:
                _say(f"signature: valid, {extracted.signed_by}")
            elif extracted.signed:
                _say("signature: present, not checked (give --public-key to check it)")
            else:
                _say("signature: none")
            p = m.provenance
            _say(f"provenance: packaged {p.created} by pyserve {p.pyserve_version}, training commit "
                 f"{p.training_commit or '(not given)'}, lock sha256 {m.lock_sha256}")
            if not extracted.lock_path.is_file():
                _say(f"FAIL: the artifact has no {LOCK}")
                return EXIT_FAILED
            rows = locks.compare(locks.loads(extracted.lock_path.read_bytes(), LOCK))
            _say("lock (pylock.toml) against this environment:")
            _say("  " + locks.table(rows).replace("\n", "\n  "))
            bad = locks.refused(rows, args.lock_policy)
            if bad:
                names = ", ".join(r.name for r in bad)
                _say(f"FAIL: direct dependencies differ from the lock: {names} (--lock-policy warn to accept)")
                return EXIT_FAILED
            # Read (never run) even with --no-golden: an artifact no server could load does not pass.
            try:
                load_model_config(extracted.model_dir)
            except ConfigError as e:  # named as the member, not as the private folder it was unpacked to
                _say(f"FAIL: {e.message.replace(str(extracted.model_dir), MODEL_PREFIX.rstrip('/'))}")
                return EXIT_FAILED
            if not extracted.version_dir.is_dir():
                _say(f"FAIL: {MODEL_PREFIX}{m.version}/: the folder of the packaged version is not in the artifact")
                return EXIT_FAILED
            if not args.no_golden:
                ok, line = asyncio.run(_golden(extracted.root, m.name, extracted.version_dir))
                _say(line)
                if not ok:
                    _say("FAIL")
                    return EXIT_FAILED
    except PyserveError as e:
        _say(f"FAIL: {e.message}")
        return EXIT_FAILED
    _say("PASS")
    return 0


async def _golden(root: Path, name: str, version_dir: Path) -> tuple[bool, str]:
    """Loads the unpacked model as a server would (golden samples run before it serves); (passed, a
    line saying what ran)."""
    from prometheus_client import CollectorRegistry

    from pyserve.metrics import golden_checks_counter
    from pyserve.release.golden import GOLDEN_FILE, GoldenSamples
    from pyserve.service import ModelHost

    golden = version_dir / GOLDEN_FILE
    count = GoldenSamples.read(golden).count if golden.is_file() else 0
    async with ModelHost(root, golden_checks=golden_checks_counter(CollectorRegistry())) as host:
        entry = host.registry.models.get(name)
        if entry is None or not entry.versions:
            reason = entry.reason if entry is not None else "not loaded"
            return False, f"model: failed to load or its golden samples failed: {reason}"
    if count == 0:
        return True, "golden samples: none in the artifact (the model loaded)"
    return True, f"golden samples: {count} of {count} passed through the {name} model's backend"
