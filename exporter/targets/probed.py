"""The targets `/probe` registered: when each was last asked for, the cap, and the idle ones.

A probed target is added and removed through the same calls as a configured one (the
daemon's `add` and `remove`: registry, scheduler, store), so it is collected exactly like one.
Prometheus scrapes it every few seconds; one nobody asked for in `probe.idle_timeout` has left
service discovery, and goes with its connections and its series.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.config import Config, ProbedTargetConfig, TargetConfig
from exporter.errors import ProbeRefused
from exporter.targets.probeaddress import DEFAULT_MODULE, probe_target

log = logging.getLogger(__name__)


@dataclass
class _Probed:
    config: ProbedTargetConfig
    module: str
    last_asked: float  # monotonic


class ProbedTargets:
    def __init__(
        self,
        config: Config,
        *,
        add: Callable[[TargetConfig], None],
        remove: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._add = add
        self._remove = remove
        self._clock = clock
        # Held while a target is added or removed, so a probe never finds one half there.
        self._lock = threading.Lock()
        self._probed: dict[str, _Probed] = {}
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._probed)

    def probe(self, target: str | None, module: str | None) -> tuple[str, bool]:
        """The name of the target a probe asks for, and whether this probe registered it;
        ProbeRefused (with its HTTP status) when it may not be probed."""
        with self._lock:
            config = self._config
            wanted = probe_target(config, target, module)
            module_name = module or DEFAULT_MODULE
            known = self._probed.get(wanted.name)
            if known is not None:
                if known.module != module_name:
                    raise ProbeRefused(
                        409,
                        f"target {wanted.name!r} is probed with auth module {known.module!r}; "
                        "one target is monitored with one module at a time",
                    )
                known.last_asked = self._clock()
                return wanted.name, False
            if len(self._probed) >= config.probe.max_targets:
                raise ProbeRefused(
                    503,
                    f"already {len(self._probed)} probed targets, the most probe.max_targets "
                    "allows; one is dropped when nobody probed it for probe.idle_timeout",
                )
            self._add(wanted)
            self._probed[wanted.name] = _Probed(wanted, module_name, self._clock())
        log.info("probed target added", extra={"target": wanted.name, "auth_module": module_name})
        return wanted.name, True

    def drop_idle(self) -> list[str]:
        """Remove the targets nobody probed within probe.idle_timeout; their names."""
        with self._lock:
            oldest = self._clock() - self._config.probe.idle_timeout
            idle = sorted(n for n, p in self._probed.items() if p.last_asked <= oldest)
            for name in idle:
                self._forget(name)
        for name in idle:
            log.info(
                "probed target dropped: not probed for probe.idle_timeout", extra={"target": name}
            )
        return idle

    def apply(self, config: Config) -> list[str]:
        """A reloaded config: a probed target stays when it would be probed with the same
        settings now (its module unchanged, still allowed, no configured target of its name);
        the others go, to be registered anew by their next probe. Their names."""
        with self._lock:
            self._config = config
            gone = []
            for name, probed in list(self._probed.items()):
                try:
                    same = probe_target(config, name, probed.module) == probed.config
                except ProbeRefused:
                    same = False
                if not same:
                    self._forget(name)
                    gone.append(name)
        return gone

    def _forget(self, name: str) -> None:
        del self._probed[name]
        self._remove(name)

    def start(self) -> None:
        """Drop idle targets in the background, a few times per idle_timeout."""
        self._sweeper = threading.Thread(target=self._sweep, name="probe-sweeper", daemon=True)
        self._sweeper.start()

    def _sweep(self) -> None:
        while not self._stop.wait(self._period()):
            try:
                self.drop_idle()
            except Exception:  # a defect must not end the sweeping
                log.exception("dropping idle probed targets failed")

    def _period(self) -> float:
        # Late by at most a quarter of the timeout (and 30 s), never busy.
        return min(30.0, max(0.25, self._config.probe.idle_timeout / 4))

    def stop(self) -> None:
        self._stop.set()
