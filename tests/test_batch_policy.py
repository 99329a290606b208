"""Property tests of the dynamic batcher's policy, ``pyserve._core.decide`` (Decide() in
csrc/core/batch_policy.h), on explicit times: no clock, no threads.

A queue is a list of ``(batch_size, signature, enqueue_ns, deadline_ns)`` in dispatch order (higher
priority first, FIFO within a priority). ``decide`` answers ``(dispatch, expire, wake_ns)``: the
positions forming the batch, the positions whose deadline has passed, and when nothing is dispatched,
when to decide again. The generated queues respect what the scheduler guarantees before calling it:
every request holds 1..max_batch_size samples (1 without batching) and was enqueued no later than now.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyserve import _core

NO_DEADLINE = _core.NO_DEADLINE
Queue = list[tuple[int, int, int, int]]


@dataclass(frozen=True)
class Case:
    """One call of decide() and its answer."""

    queue: Queue
    now_ns: int
    max_batch_size: int
    preferred: list[int]
    delay_ns: int
    dispatch: list[int]
    expire: list[int]
    wake_ns: int

    def live(self) -> list[int]:
        """Positions whose deadline has not passed, in order."""
        return [i for i, r in enumerate(self.queue) if r[3] > self.now_ns]

    def head(self) -> int | None:
        """The first live position: it fixes the batch's signature."""
        live = self.live()
        return live[0] if live else None

    def compatible(self) -> list[int]:
        """Live positions with the head's signature, in order."""
        head = self.head()
        if head is None:
            return []
        return [i for i in self.live() if self.queue[i][1] == self.queue[head][1]]

    def samples(self, positions: list[int]) -> int:
        return sum(self.queue[i][0] for i in positions)


@st.composite
def cases(draw: st.DrawFn, max_len: int = 16) -> Case:
    max_batch_size = draw(st.integers(0, 12))
    preferred = (
        sorted(draw(st.sets(st.integers(1, max_batch_size), max_size=3))) if max_batch_size > 0 else []
    )
    delay_ns = draw(st.sampled_from([0, 1, 500, 1000, 10_000]))
    now_ns = draw(st.integers(0, 5000))
    queue: Queue = []
    for _ in range(draw(st.integers(0, max_len))):
        batch_size = draw(st.integers(1, max_batch_size)) if max_batch_size > 0 else 1
        signature = draw(st.integers(1, 3))
        enqueue_ns = draw(st.integers(0, now_ns))
        timeout_ns = draw(st.one_of(st.none(), st.integers(1, 6000)))
        queue.append((batch_size, signature, enqueue_ns, NO_DEADLINE if timeout_ns is None else enqueue_ns + timeout_ns))
    dispatch, expire, wake_ns = _core.decide(queue, now_ns, max_batch_size, preferred, delay_ns)
    return Case(queue, now_ns, max_batch_size, preferred, delay_ns, list(dispatch), list(expire), wake_ns)


PROPERTY = settings(max_examples=150, deadline=None)


@PROPERTY
@given(cases())
def test_never_more_samples_than_max_batch_size(c: Case) -> None:
    if c.max_batch_size == 0:
        assert len(c.dispatch) <= 1
    else:
        assert c.samples(c.dispatch) <= c.max_batch_size


@PROPERTY
@given(cases())
def test_dispatch_starts_at_the_head_ascending_with_its_signature(c: Case) -> None:
    assert c.dispatch == sorted(set(c.dispatch))
    if c.dispatch:
        assert c.dispatch[0] == c.head()
        signatures = {c.queue[i][1] for i in c.dispatch}
        assert signatures == {c.queue[c.dispatch[0]][1]}


@PROPERTY
@given(cases())
def test_expired_requests_are_answered_and_never_run(c: Case) -> None:
    assert c.expire == sorted(set(c.expire))
    assert not set(c.expire) & set(c.dispatch)
    assert all(c.queue[i][3] <= c.now_ns for i in c.expire)
    # Decide stops scanning once the batch is final, so expiry is only promised up to the last position
    # it had to look at: the whole queue when it waits, up to the last dispatched position otherwise.
    scanned = len(c.queue) if not c.dispatch else c.dispatch[-1] + 1
    assert [i for i in range(scanned) if c.queue[i][3] <= c.now_ns] == [i for i in c.expire if i < scanned]


@PROPERTY
@given(cases())
def test_fifo_the_batch_is_a_prefix_of_the_compatible_live_requests(c: Case) -> None:
    # No compatible request is passed over in favour of a later one: the batch is the first k
    # compatible live requests, and it stops only where the next one would not fit, at a preferred
    # size, or at max_batch_size.
    compatible = c.compatible()
    k = len(c.dispatch)
    assert c.dispatch == compatible[:k]
    if c.dispatch and c.max_batch_size > 0 and k < len(compatible):
        fits = c.samples(compatible[: k + 1]) <= c.max_batch_size
        assert not fits or c.samples(c.dispatch) in c.preferred


@PROPERTY
@given(cases())
def test_waits_only_while_the_head_is_younger_than_the_delay(c: Case) -> None:
    head = c.head()
    if head is None:
        assert c.dispatch == [] and c.wake_ns == NO_DEADLINE
        return
    if c.now_ns >= c.queue[head][2] + c.delay_ns:
        assert c.dispatch, "the head has waited max_queue_delay: something must go"
    if not c.dispatch:
        assert c.now_ns < c.wake_ns <= c.queue[head][2] + c.delay_ns
        # Waiting for the gathered batch never answers a gathered request's deadline late.
        assert all(c.wake_ns <= c.queue[i][3] for i in c.compatible())


@PROPERTY
@given(cases())
def test_wakes_no_later_than_any_live_deadline(c: Case) -> None:
    # Includes requests of another signature, which wait behind the head's batch: waking only at the
    # head's delay would answer their DEADLINE_EXCEEDED up to max_queue_delay late.
    if not c.dispatch and c.live():
        assert c.wake_ns <= min(c.queue[i][3] for i in c.live())


@PROPERTY
@given(cases())
def test_full_batch_or_delay_passed_sends_everything_that_fits(c: Case) -> None:
    if not c.dispatch or c.max_batch_size == 0:
        return
    compatible = c.compatible()
    greedy: list[int] = []
    for i in compatible:
        if c.samples(greedy + [i]) > c.max_batch_size:
            break
        greedy.append(i)
    oldest = min(c.queue[i][2] for i in greedy)
    if c.now_ns >= oldest + c.delay_ns or len(greedy) < len(compatible) or c.samples(greedy) == c.max_batch_size:
        assert c.dispatch == greedy
    else:  # dispatched early: only at the largest preferred size the gathered requests reach
        sums = [c.samples(greedy[: j + 1]) for j in range(len(greedy))]
        reached = [j for j, s in enumerate(sums) if s in c.preferred]
        assert reached and c.dispatch == greedy[: reached[-1] + 1]


@PROPERTY
@given(cases())
def test_without_batching_exactly_one_live_request_goes_at_once(c: Case) -> None:
    if c.max_batch_size != 0:
        return
    head = c.head()
    assert c.dispatch == ([] if head is None else [head])


# Exact examples: (queue, now_ns, max_batch_size, preferred, delay_ns) -> (dispatch, expire, wake_ns).
N = NO_DEADLINE
EXAMPLES = [
    pytest.param([(1, 7, 100, N), (1, 7, 110, N), (2, 7, 120, N)], 130, 4, [], 10**6, ([0, 1, 2], [], N), id="full"),
    pytest.param([(3, 7, 100, N), (2, 7, 110, N), (1, 7, 120, N)], 130, 4, [], 10**6, ([0], [], N), id="next-does-not-fit"),
    pytest.param([(1, 7, 100, N)] * 3, 130, 8, [2, 4], 10**6, ([0, 1], [], N), id="preferred"),
    pytest.param([(1, 7, 100, N), (2, 7, 200, N)], 500, 8, [], 1000, ([], [], 1100), id="wait-for-delay"),
    pytest.param([(1, 7, 100, N), (2, 7, 200, N)], 1100, 8, [], 1000, ([0, 1], [], N), id="delay-passed"),
    pytest.param([(1, 7, 100, N), (1, 7, 200, 900)], 500, 8, [], 1000, ([], [], 900), id="wake-for-deadline"),
    pytest.param([(1, 7, 100, 400), (1, 7, 150, N)], 500, 8, [], 1000, ([], [0], 1150), id="expire-head"),
    pytest.param([(1, 7, 100, N), (1, 9, 110, N), (1, 7, 120, N)], 5000, 8, [], 1000, ([0, 2], [], N), id="signature"),
    pytest.param([(1, 7, 100, N), (1, 7, 110, N)], 110, 0, [], 10**6, ([0], [], N), id="no-batching"),
    pytest.param([], 0, 8, [], 1000, ([], [], N), id="empty"),
]


@pytest.mark.parametrize(("queue", "now_ns", "max_batch_size", "preferred", "delay_ns", "expected"), EXAMPLES)
def test_exact_decisions(
    queue: Queue, now_ns: int, max_batch_size: int, preferred: list[int], delay_ns: int, expected: tuple
) -> None:
    dispatch, expire, wake_ns = _core.decide(queue, now_ns, max_batch_size, preferred, delay_ns)
    assert (list(dispatch), list(expire), wake_ns) == (list(expected[0]), list(expected[1]), expected[2])
