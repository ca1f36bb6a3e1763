"""A target's per-database collectors, run in rounds: one visit per database for all of them,
and the logins those visits make spaced to a rate.

Each visit to a database other than the target's own is a new session on the server: a
process forked, a login authenticated, a line in its log under `log_connections`. Run one by
one, seven per-database collectors on a server of a thousand databases would log in
thousands of times an hour. In a round, each database gets one session for every collector
due there, and with `visit_logins_per_minute` the rounds are spaced so that their logins keep
to that rate on average: a round that logged in N times is followed by the next one no sooner
than N / rate minutes later. Their collectors' intervals (`pg_exporter_collector_interval_
seconds`) grow to that spacing, and what they publish lasts as long.

First runs are never held back (at start, and a collector changed by a reload): they run at
the next tick, together, whatever the spacing.
"""

import logging
import time
from collections.abc import Callable

from exporter.collection.jobs import CollectorJob, run_together
from exporter.targets import Target

log = logging.getLogger(__name__)

# The target's per-database collectors, each with its interval now (None: not to run yet).
RoundJobs = Callable[[], list[tuple[CollectorJob, float | None]]]


class DatabaseRound:
    """Scheduled every `tick` seconds: runs the target's per-database collectors that are due
    (or have not run yet), together (jobs.run_together)."""

    def __init__(
        self, target: Target, jobs: RoundJobs, *, tick: float, logins_per_minute: float | None
    ) -> None:
        self.target = target
        self._jobs = jobs
        self.tick = tick
        self._logins_per_minute = logins_per_minute
        self._not_before = 0.0  # monotonic: when the logins' rate lets the next round start
        self._spaced = False  # logged that the rounds are spaced out beyond their intervals

    def due(self, now: float) -> list[CollectorJob]:
        """The collectors a round at `now` (monotonic) runs: those not run yet, and, once the
        spacing has passed (never sooner: the rate is a ceiling), the others whose interval
        has passed, give or take half a tick."""
        paced = now < self._not_before
        return [
            job
            for job, interval in self._jobs()
            if interval is not None
            and (job.fresh or (not paced and job.due(now, interval, self.tick / 2)))
        ]

    def __call__(self) -> None:
        jobs = self.due(time.monotonic())
        while jobs:
            self._run(jobs)
            # Collectors whose first run was held back until others' had theirs (see
            # Scheduler.add_target) may have been let go while this round ran: now, not a
            # tick later.
            jobs = [job for job in self.due(time.monotonic()) if job.fresh]

    def _run(self, jobs: list[CollectorJob]) -> None:
        started = time.monotonic()
        first_runs_only = all(job.fresh for job in jobs)
        logins = run_together(jobs, floor=self._spacing)
        spacing = self._spacing(logins)
        # A round of first runs only, within the spacing of the one before (at start, the
        # collectors held back until the prompt ones ran), leaves that spacing as it was:
        # the next round of the others still comes on time.
        if not (first_runs_only and started < self._not_before):
            self._not_before = max(self._not_before, started + spacing)
        self._log_spacing(spacing, logins, jobs)
        # A collector due between two rounds waits for the next: up to a tick, or the spacing,
        # past its interval is not late (CollectorJob.slack).
        for job, _ in self._jobs():
            job.slack = self.tick + spacing
        for job in jobs:
            if job.late > 0 and not job.behind:
                job.behind = True
                log.warning(
                    "collector cannot keep its interval",
                    extra={
                        "target": self.target.name,
                        "collector": job.name,
                        "interval": job.interval,
                        "reason": "its round of visits to the databases started late",
                    },
                )

    def _log_spacing(self, spacing: float, logins: int, jobs: list[CollectorJob]) -> None:
        """One log line when the rounds come to be spaced out beyond the shortest interval of
        their collectors (and none again until they are not)."""
        shortest = min(job.collector.spec.interval for job in jobs)
        spaced = spacing > shortest
        if spaced and not self._spaced:
            log.info(
                "visits to other databases spaced out to keep to visit_logins_per_minute",
                extra={
                    "target": self.target.name,
                    "logins": logins,
                    "every": f"{spacing:.0f}s",
                },
            )
        self._spaced = spaced

    def _spacing(self, logins: int) -> float:
        """Seconds between the starts of two rounds for `logins` to keep to the rate."""
        if not self._logins_per_minute:
            return 0.0
        return 60.0 * logins / self._logins_per_minute
