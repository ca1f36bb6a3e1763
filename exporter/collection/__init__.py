"""One collector run from SQL to rendered parts: `run` (the SQL and its rows), `rowcap` (which
rows become series), `jobs` (probe and collector jobs, each publishing once), `scheduler`
(when they run) and `once` (every collector once, for the `once` and `report` commands)."""

from exporter.collection.jobs import CollectorJob, ProbeJob
from exporter.collection.once import Collected, run_once
from exporter.collection.scheduler import Scheduler

__all__ = ["Collected", "CollectorJob", "ProbeJob", "Scheduler", "run_once"]
