"""A frozen server: the postmaster and every backend stopped (SIGSTOP).

The kernel still completes TCP handshakes on the listening socket and acknowledges what is
sent on open sessions, so nothing fails: nothing answers. What a hung host, a VM paused for
migration or a process stuck in the kernel looks like from outside.
"""

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from exporter.demo.embedded import LocalPostgres


def postmaster_pid(server: LocalPostgres) -> int:
    return int((server.datadir / "postmaster.pid").read_text().splitlines()[0])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid ...; comm may hold spaces and parentheses: split after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@contextmanager
def frozen(server: LocalPostgres) -> Iterator[None]:
    """Stop the server's processes (the postmaster first, so it forks no new backend), and
    let them go on afterwards, whatever happened meanwhile."""
    postmaster = postmaster_pid(server)
    stopped = [postmaster]
    try:
        os.kill(postmaster, signal.SIGSTOP)
        for child in _children(postmaster):
            os.kill(child, signal.SIGSTOP)
            stopped.append(child)
        yield
    finally:
        for pid in reversed(stopped):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
