"""The one worker pool of the process: fair across targets, whatever one target does."""

import threading
from concurrent.futures import wait
from dataclasses import dataclass

import pytest

from exporter.collection.scheduler import _DaemonThreads

pytestmark = pytest.mark.any_major

DEADLINE = 10.0


@dataclass
class Job:
    """What APScheduler submits as run_job's first argument: a job with an id."""

    id: str


def test_a_stuck_target_holds_no_more_workers_than_its_share() -> None:
    pool = _DaemonThreads(3, "test", share=lambda target: 1)
    frozen = threading.Event()
    started: list[str] = []

    def stuck(job: Job) -> None:
        started.append(job.id)
        assert frozen.wait(DEADLINE)

    try:
        stuck_jobs = [pool.submit(stuck, Job(f"frozen/c{n}")) for n in range(5)]
        others = [pool.submit(lambda job: job.id, Job(f"db{n}/database")) for n in range(20)]
        done, _ = wait(others, timeout=DEADLINE)
        assert len(done) == 20  # none waited behind the stuck target's jobs
        assert started == ["frozen/c0"]  # its other jobs wait for its one share, not a worker
        stats = pool.stats()
        assert stats["busy"] == 1
        assert stats["queued"] == 4
    finally:
        frozen.set()
    done, _ = wait(stuck_jobs, timeout=DEADLINE)
    assert len(done) == 5
    assert started == [f"frozen/c{n}" for n in range(5)]  # in order, one at a time
    pool.shutdown()


def test_a_target_runs_up_to_its_share_at_once() -> None:
    pool = _DaemonThreads(8, "test", share=lambda target: 2)
    pairs = threading.Barrier(2)  # each job waits for a second one to run beside it
    lock = threading.Lock()
    running = 0
    most = 0

    def job(_: Job) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        pairs.wait(DEADLINE)  # broken (an error) if the pool never ran two at once
        with lock:
            running -= 1

    futures = [pool.submit(job, Job(f"pg/c{n}")) for n in range(6)]
    done, _ = wait(futures, timeout=DEADLINE)
    assert len(done) == 6
    assert all(f.exception() is None for f in futures)
    assert most == 2  # never a third: 8 workers, but the target's share is 2
    assert pool.stats()["wait_seconds"] > 0
    pool.shutdown()


def test_fast_collectors_go_ahead_of_the_others_waiting() -> None:
    """At start every target's first runs queue at once: the fast collectors (pg_up's
    companions) run before the slower ones that were queued before them."""
    pool = _DaemonThreads(1, "test", ahead=lambda job_id: job_id.endswith("/database"))
    busy, release = threading.Event(), threading.Event()
    order: list[str] = []

    def job(job: Job) -> None:
        order.append(job.id)
        if job.id == "blocker/tables":
            busy.set()
            assert release.wait(DEADLINE)

    blocker = pool.submit(job, Job("blocker/tables"))
    assert busy.wait(DEADLINE)  # the one worker is taken: the rest queue
    queued = [
        pool.submit(job, Job(job_id))
        for job_id in ("a/tables", "a/database", "b/indexes", "b/database", "c/statements")
    ]
    release.set()
    done, _ = wait([blocker, *queued], timeout=DEADLINE)
    assert len(done) == 6
    assert order == [
        "blocker/tables",
        "a/database",
        "b/database",  # both fast ones first, each in its order
        "a/tables",
        "b/indexes",
        "c/statements",  # then the others, in theirs
    ]
    pool.shutdown()
