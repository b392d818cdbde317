"""The owner watchdog: a private mount whose owner died must not live for ever.

``cas exec`` names itself as the mount's owner (``CAS_MOUNT_OWNER``).  If it is
SIGKILLed, nobody would ever unmount its private mount, so the daemon checks
the owner once a second and detaches the mount lazily when it is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

from casstore.fileio.fsutil import alive

log = logging.getLogger(__name__)
OWNER_ENV = "CAS_MOUNT_OWNER"
WORKER_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
CHECK_S = 1.0


def owner_from_env() -> int:
    try:
        return int(os.environ.get(OWNER_ENV, "0") or 0)
    except ValueError:
        return 0


class OwnerWatchdog:
    """A thread that lazily unmounts ``mountpoint`` once process ``owner`` is gone."""

    def __init__(self, owner: int, mountpoint: Path) -> None:
        self.owner, self.mountpoint = owner, mountpoint
        self.stop = threading.Event()

    def start(self) -> None:
        if self.owner:
            threading.Thread(target=self._run, daemon=True, name="owner-watchdog").start()

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        while not self.stop.wait(CHECK_S):
            if not alive(self.owner):
                log.warning("owner process %d is gone: unmounting %s", self.owner,
                            self.mountpoint)
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True)
                return
