"""``cas umount`` tells the truth: success only once the daemon has exited; a copy
of the mount held by another mount namespace is named (its namespace and PIDs), and
``cas status --all`` lists that copy once, as a copy.  Real mounts, a real
``unshare -m`` namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casstore.errors import MountBusy, UnmountIncomplete

from fuse_fixtures import Kit, mounted, run_cas

needs_ns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                              reason="needs root and unshare(1)")


def _alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False


def _wait(cond, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def daemon(kit: Kit) -> Iterator[tuple[Kit, Path, int]]:
    """A release mounted in daemon mode (``cas mount``), and its daemon's PID; always
    unmounted (lazily) at the end.  A namespace someone else makes meanwhile may hold
    a copy of the mount, so the daemon (ours) is then ended by its PID."""
    src = kit.base / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    kit.publish("rel", 1, kit.put(src))
    mp = kit.base / "mnt"
    mp.mkdir()
    res = run_cas("mount", "--config", str(kit.config), "rel", str(mp))
    assert res.returncode == 0, res.stderr
    st = json.loads(run_cas("--json", "status", "--config", str(kit.config), str(mp)).stdout)
    pid = int(st["pid"])
    try:
        yield kit, mp, pid
    finally:
        if mounted(mp):
            subprocess.run(["fusermount3", "-uz", str(mp)], check=False)
        if not _wait(lambda: not _alive(pid), 10):
            os.kill(pid, signal.SIGTERM)
        assert _wait(lambda: not _alive(pid)), f"daemon {pid} left behind"


@needs_ns
def test_umount_names_the_namespace_holding_a_copy(daemon) -> None:
    """A namespace made after the mount holds a copy: ``cas umount`` (without --config,
    so the daemon is found through the kernel) exits 33 naming that namespace and its
    PID, the daemon lives on, ``cas status --all`` lists the copy once; once the
    namespace's process ends, the daemon exits."""
    k, mp, pid = daemon
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"])
    try:
        assert _wait(lambda: os.readlink(f"/proc/{holder.pid}/ns/mnt")
                     != os.readlink("/proc/self/ns/mnt"))
        ns = os.readlink(f"/proc/{holder.pid}/ns/mnt").partition("[")[2].rstrip("]")
        env_free = run_cas("umount", str(mp), timeout=120)
        assert env_free.returncode == UnmountIncomplete.exit_code, env_free.stderr
        line = env_free.stderr.strip()
        assert line.count("\n") == 0 and "Traceback" not in line, line
        assert f"daemon (pid {pid}) still runs" in line and ns in line, line
        assert str(holder.pid) in line and "nsenter" in line, line
        assert not mounted(mp) and _alive(pid)
        js = run_cas("--json", "status", "--all", "--config", str(k.config))
        rows = [r for r in json.loads(js.stdout) if r.get("mountpoint") == str(mp)]
        copies = [r for r in rows if r["state"] == "copy"]
        assert len(copies) == 1 and copies[0]["mount_ns"] == ns, rows
        assert copies[0]["pid"] == pid, copies
        text = run_cas("status", "--all", "--config", str(k.config)).stdout
        assert sum(f"copy (of the mount of daemon {pid}" in ln for ln in text.splitlines()) == 1
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(30)
    assert _wait(lambda: not _alive(pid)), "the daemon outlived the last copy"


def test_umount_without_config_waits_for_the_daemon(daemon) -> None:
    """Without --config (the status file is in another run_dir) the daemon is still
    found, and ``cas umount`` returns only once it has exited."""
    _kit, mp, pid = daemon
    res = run_cas("--json", "umount", str(mp))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["daemon_pid"] == pid
    assert not _alive(pid)


def test_busy_umount_hints_at_lazy(daemon) -> None:
    _kit, mp, pid = daemon
    busy = subprocess.Popen(["sleep", "600"], cwd=mp)
    try:
        res = run_cas("umount", str(mp))
        assert res.returncode == MountBusy.exit_code, res.stderr
        assert "--lazy" in res.stderr and res.stderr.count("\n") == 1, res.stderr
        assert mounted(mp) and _alive(pid)
    finally:
        busy.kill()
        busy.wait(10)
