"""Runs one fuzz target under atheris (libFuzzer), with the committed seed corpus.

    python tests/fuzz/run.py TARGET [libFuzzer flags...]

TARGET is one of json, json_diff, reply_diff, binary, msgpack, http (tests/fuzz/targets.py). The seeds in
tests/fuzz/corpus/TARGET are read first; new inputs that reach new code go to a scratch folder given
with ``-corpus DIR`` (default: a new temporary folder), crashes to ``-artifact_prefix`` (libFuzzer's default: the
working directory). Examples:

    python tests/fuzz/run.py json -max_total_time=3600          # an hour
    python tests/fuzz/run.py http -runs=100000 -corpus /var/tmp/fuzz-http
    python tests/fuzz/run.py msgpack crash-1234abcd              # replay one input

pyserve's functions are instrumented for coverage; numpy, orjson, msgpack and httptools
are not (compiled code, and their own projects fuzz them).
"""

from __future__ import annotations

import inspect
import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent


def instrument_pyserve() -> int:
    """Instruments the functions and methods of every loaded pyserve module for coverage; returns
    how many. (pyserve is installed in editable mode, through a finder that
    ``atheris.instrument_imports`` does not hook; ``instrument_all`` would take minutes over numpy.)"""
    count = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("pyserve") or module is None:
            continue
        for value in list(vars(module).values()):
            functions = [value] if inspect.isfunction(value) else []
            if inspect.isclass(value) and value.__module__ == name:
                functions += [f for f in vars(value).values() if inspect.isfunction(f)]
            for f in functions:
                if f.__module__ == name:
                    atheris.instrument_func(f)
                    count += 1
    return count


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in ("json", "json_diff", "reply_diff", "binary", "msgpack", "http"):
        raise SystemExit(__doc__)
    name, flags = argv[1], argv[2:]
    # libFuzzer writes the new inputs it finds into the first corpus folder: never the seeds'.
    if "-corpus" in flags:
        i = flags.index("-corpus")
        corpus = [flags[i + 1]]
        Path(corpus[0]).mkdir(parents=True, exist_ok=True)
        del flags[i:i + 2]
    else:
        corpus = [tempfile.mkdtemp(prefix=f"pyserve-fuzz-{name}-")]
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))  # tests/: the helpers targets.py shares with the tests
    import targets

    instrument_pyserve()
    replay = [f for f in flags if not f.startswith("-")]
    seeds = [] if replay else [str(HERE / "corpus" / name)]
    atheris.Setup([argv[0], *flags, *corpus, *seeds], targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
