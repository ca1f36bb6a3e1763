"""The one connection slot for visits: one holder at a time, the probe first, counted."""

import threading

import pytest

from exporter.targets.sessions import _VisitSlot
from support import wait_for

pytestmark = pytest.mark.any_major


def test_a_wait_that_times_out_leaves_the_holder_its_claim() -> None:
    slot = _VisitSlot()
    assert slot.acquire(0)
    assert not slot.acquire(0.01)  # a visitor gives up...
    assert not slot.acquire(0, probe=True)  # ...and the slot is still held
    slot.release()
    assert slot.acquire(0)


def test_a_waiting_probe_goes_before_visitors() -> None:
    slot = _VisitSlot()
    assert slot.acquire(0)
    probe_has_it = threading.Event()

    def probe() -> None:
        if slot.acquire(5, probe=True):
            probe_has_it.set()

    thread = threading.Thread(target=probe)
    thread.start()
    # Wait until the probe is queued, then free the slot: a visitor trying now loses to it.
    wait_for(lambda: slot.stats()["visits_waiting"] == 1, timeout=5, what="the probe queued")
    slot.release()
    assert probe_has_it.wait(5)
    thread.join(5)
    assert not slot.acquire(0)


def test_counters_like_the_pools() -> None:
    slot = _VisitSlot()
    assert slot.acquire(0)
    assert not slot.acquire(0)  # a try: not a wait
    assert not slot.acquire(0.02)  # a wait that timed out
    slot.release()
    assert slot.acquire(1)
    stats = slot.stats()
    assert stats["visits_num"] == 2
    assert stats["visits_queued"] == 1
    assert stats["visits_errors"] == 1
    assert stats["visits_waiting"] == 0
    assert stats["visits_wait_ms"] >= 15
