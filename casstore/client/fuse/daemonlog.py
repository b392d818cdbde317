"""Where the mount daemon logs: syslog/journald, or a file, with the mount point on
every line.

A node may run several mounts (``/depot``, ``cas exec`` jobs in their own
namespaces); their lines meet in one journal, so every line names its mount point
(a handler :class:`logging.Filter` adds it to each record, whichever logger made
it).  ``log`` in the client config picks the destination:

* ``"syslog"`` (the default): :class:`logging.handlers.SysLogHandler` on the unix
  socket ``syslog_address`` (``/dev/log``, which journald also listens on),
  facility ``daemon``, identifier ``casstore-mount``; if that socket does not
  exist (a container without syslog), the file below instead;
* ``"file"``: ``state_dir/mounts/<quoted mount point>.log`` (as before);
* any other string: that file.

``--foreground`` also logs to stderr.  A traceback's continuation lines carry the
mount point too, so ``grep`` for a mount point finds all of a failure.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import stat
import sys
from pathlib import Path

from casstore.client.config import ClientConfig

SYSLOG_IDENT = "casstore-mount"
FILE_FORMAT = "%(asctime)s %(process)d [%(mountpoint)s] %(name)s %(levelname)s %(message)s"
SYSLOG_FORMAT = (SYSLOG_IDENT + "[%(process)d]: [%(mountpoint)s] %(levelname)s %(name)s: "
                 "%(message)s")


def printable(text: str) -> str:
    """A mount point as one line: control characters escaped (``\\n`` -> ``\\\\n``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class MountpointFilter(logging.Filter):
    """Adds ``mountpoint`` to every record a handler emits."""

    def __init__(self, mountpoint: str) -> None:
        super().__init__()
        self.mountpoint = printable(mountpoint)

    def filter(self, record: logging.LogRecord) -> bool:
        record.mountpoint = self.mountpoint
        return True


class MountFormatter(logging.Formatter):
    """Continuation lines (a traceback, a multi-line message) name the mount point too."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if "\n" in text:
            text = text.replace("\n", f"\n[{getattr(record, 'mountpoint', '?')}] ")
        return text


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def syslog_handler(address: Path) -> logging.Handler:
    """A handler on the syslog socket ``address`` (raises OSError if unusable)."""
    h = logging.handlers.SysLogHandler(address=str(address),
                                       facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    h.setFormatter(MountFormatter(SYSLOG_FORMAT))
    return h


def setup_logging(cfg: ClientConfig, mountpoint: Path, default_file: Path,
                  foreground: bool) -> str:
    """Configure the daemon's root logger; returns where it logs (for the status
    file): ``syslog:<address>`` or the log file's path."""
    handlers: list[logging.Handler] = []
    note = ""
    log_file = cfg.log if isinstance(cfg.log, Path) else default_file
    where = str(log_file)
    if cfg.log == "syslog":
        if _is_socket(cfg.syslog_address):
            try:
                handlers.append(syslog_handler(cfg.syslog_address))
                where = f"syslog:{cfg.syslog_address}"
            except OSError as exc:
                note = f"cannot log to syslog at {cfg.syslog_address} ({exc}); logging here"
        else:
            note = f"no syslog socket at {cfg.syslog_address}; logging here"
    if not handlers:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(MountFormatter(FILE_FORMAT))
        handlers.append(fh)
    if foreground:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(MountFormatter(FILE_FORMAT))
        handlers.append(sh)
    flt = MountpointFilter(str(mountpoint))
    for h in handlers:
        h.addFilter(flt)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    if note:
        logging.getLogger("casstore.client.fuse.mount").info("%s", note)
    return where
