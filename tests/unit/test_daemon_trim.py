"""berthd's heap trimming: when TrimSchedule says to trim, and the loop that obeys it."""

from __future__ import annotations

import asyncio
import itertools

from berth.daemon import TrimSchedule, trim_heap_forever

BUSY = 0.5  # CPU seconds within one poll: well above the busy threshold


def test_boot_counts_as_work_so_the_first_quiet_poll_trims_once() -> None:
    sched = TrimSchedule(now=0.0, cpu=1.0)
    assert sched.due(1.0, 1.0)
    assert not sched.due(2.0, 1.0)
    assert not sched.due(3.0, 1.0)


def test_the_first_quiet_poll_after_work_trims_and_later_quiet_polls_do_not() -> None:
    sched = TrimSchedule(now=0.0, cpu=0.0)
    assert sched.due(1.0, 0.0)  # boot
    assert not sched.due(2.0, BUSY)  # work: it may still be freeing
    assert not sched.due(3.0, 2 * BUSY)
    assert sched.due(4.0, 2 * BUSY)  # quiet again
    assert not sched.due(5.0, 2 * BUSY)


def test_long_work_trims_once_per_interval_and_again_when_it_ends() -> None:
    sched = TrimSchedule(now=0.0, cpu=0.0, interval=10.0)
    cpu = 0.0
    trims = []
    for second in range(1, 26):
        cpu += BUSY
        if sched.due(float(second), cpu):
            trims.append(second)
    assert trims == [10, 20]
    assert sched.due(26.0, cpu)  # the work is over


def test_cpu_below_the_busy_threshold_is_not_work() -> None:
    sched = TrimSchedule(now=0.0, cpu=0.0, busy_cpu=0.01)
    assert sched.due(1.0, 0.0)
    assert not sched.due(2.0, 0.004)
    assert not sched.due(3.0, 0.008)


def test_the_cpu_time_of_a_trim_is_not_taken_for_work() -> None:
    sched = TrimSchedule(now=0.0, cpu=0.0)
    assert sched.due(1.0, 0.0)
    sched.trimmed(0.3)  # a slow trim of a large heap
    assert not sched.due(2.0, 0.3)


def test_trim_loop_trims_once_after_a_burst_of_work() -> None:
    async def main() -> list[int]:
        trims: list[int] = []
        trimmed = asyncio.Event()
        # The first poll trims what boot freed; then comes one burst of work.
        readings = itertools.chain([0.0, 0.0], [0.0, BUSY, 2 * BUSY], itertools.repeat(2 * BUSY))
        ticks = itertools.count()

        def trim(pad: int) -> None:
            trims.append(pad)
            if len(trims) == 2:
                trimmed.set()

        task = asyncio.create_task(
            trim_heap_forever(
                poll=0,
                trim=trim,
                cpu=lambda: next(readings),
                clock=lambda: float(next(ticks)) * 1e-3,
            )
        )
        try:
            await asyncio.wait_for(trimmed.wait(), timeout=30)
            for _ in range(50):  # quiet polls go on: none of them may trim
                await asyncio.sleep(0)
        finally:
            task.cancel()
        return trims

    assert asyncio.run(main()) == [0, 0]
