"""``pyserve serve --workers N``: N server processes on one port (docs/scaling.md).

The parent (:mod:`pyserve.workers.supervisor`) reserves the port and starts N worker processes,
each a whole server (its own event loop, core scheduler and backends) listening on the port with
SO_REUSEPORT, so that the kernel spreads connections over them. The workers reach one another over
a private channel (:mod:`pyserve.workers.channel`: HTTP on Unix sockets in a directory only the
server's user can open), through which the worker answering a call makes it a call of the whole
server (:mod:`pyserve.workers.routes`): ``/metrics`` sums every worker's series
(:mod:`pyserve.workers.metrics`), model control is applied by every worker, and readiness is true
only when every worker is ready. Two files of the supervisor's runtime directory carry state past a
worker's death: the control journal a restarted worker replays before it takes connections
(:mod:`pyserve.workers.journal`), and the saved and retired counters that keep the summed counters
monotonic (:mod:`pyserve.workers.counters`).
"""

from pyserve.workers.settings import WorkerSettings

__all__ = ["WorkerSettings"]
