"""The gc scheduler parks when idle and still collects when containerd's rules say so."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from berth.core.metadata import gc

# A collection this fast makes the periodic check interval about 10 ms
# (pause threshold 0.02: interval = pause / 0.02 - pause).
PAUSE = 0.0002


class CountingScheduler(gc.Scheduler):
    """A scheduler that counts its periodic checks."""

    def __init__(self, config: gc.SchedulerConfig) -> None:
        super().__init__(lambda: gc.Stats(meta_seconds=PAUSE), config)
        self.checks = 0

    def _check_would_collect(self) -> bool:
        self.checks += 1
        return super()._check_would_collect()


async def until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(3000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


def run(config: gc.SchedulerConfig, body: Callable[[CountingScheduler], Awaitable[None]]) -> None:
    async def main() -> None:
        sched = CountingScheduler(config)
        sched.start()
        try:
            await until(lambda: sched.collections == 1, "the start-up collection ran")
            # The check after it finds nothing to do: from then on it is parked.
            await until(lambda: sched.checks >= 2, "the first periodic check ran")
            await body(sched)
        finally:
            await sched.close()

    asyncio.run(main())


def test_idle_scheduler_stops_waking_up_once_a_check_finds_nothing_to_do() -> None:
    async def body(sched: CountingScheduler) -> None:
        checks = sched.checks
        for _ in range(20):  # about twenty check intervals
            await asyncio.sleep(0.01)
        assert sched.checks == checks
        assert sched.collections == 1

    run(gc.SchedulerConfig(startup_delay=0.001), body)


def test_deletion_after_parking_is_collected() -> None:
    async def body(sched: CountingScheduler) -> None:
        sched.on_mutation(True)
        await until(lambda: sched.collections == 2, "the deletion was collected")

    run(gc.SchedulerConfig(startup_delay=0.001), body)


def test_deletion_below_the_deletion_threshold_is_collected_by_the_next_check() -> None:
    # As in containerd: a pending deletion makes the periodic check collect,
    # even when it did not reach the threshold for an immediate collection.
    async def body(sched: CountingScheduler) -> None:
        sched.on_mutation(True)
        await until(lambda: sched.collections == 2, "the periodic check collected")

    run(gc.SchedulerConfig(startup_delay=0.001, deletion_threshold=5), body)


def test_mutations_reaching_the_threshold_after_parking_are_collected() -> None:
    async def body(sched: CountingScheduler) -> None:
        for _ in range(3):
            sched.on_mutation(False)
        await until(lambda: sched.collections == 2, "the mutations were collected")

    run(gc.SchedulerConfig(startup_delay=0.001, mutation_threshold=3), body)


def test_mutations_below_the_threshold_leave_the_scheduler_parked() -> None:
    async def body(sched: CountingScheduler) -> None:
        sched.on_mutation(False)
        await asyncio.sleep(0.01)  # the report crosses the loop
        checks = sched.checks
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert sched.checks == checks
        assert sched.collections == 1

    run(gc.SchedulerConfig(startup_delay=0.001, mutation_threshold=3), body)


def test_forced_collection_after_parking_runs_and_returns_its_stats() -> None:
    async def body(sched: CountingScheduler) -> None:
        stats = await asyncio.wait_for(sched.schedule_and_wait(), timeout=30)
        assert stats.meta_seconds == PAUSE
        assert sched.collections == 2

    run(gc.SchedulerConfig(startup_delay=0.001), body)
