"""One monitored server: its sessions (a pool plus a visiting slot, every reply bounded by the
watchdog), the facts its probe reads, and the registry of targets."""

from exporter.targets.facts import ServerFacts
from exporter.targets.registry import Target, TargetRegistry

__all__ = ["ServerFacts", "Target", "TargetRegistry"]
