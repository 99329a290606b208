"""``pyserve bench``: a load generator that measures what one replica of a KServe v2 model holds and
answers how many replicas a target rate needs. See docs/bench.md."""

from pyserve.bench.cli import add_arguments, run

__all__ = ["add_arguments", "run"]
