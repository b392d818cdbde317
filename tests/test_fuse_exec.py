"""``cas exec``: a release mounted for one command, in a private mount namespace."""

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

from casstore.errors import UntrustedKey

from fuse_fixtures import CAS, ROOT, Kit, mounted

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                       reason="cas exec needs root and unshare(1)"),
]


class Exec:
    """Runs ``cas exec`` for one release; finds (and finally kills) what it leaves."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.mp = kit.base / "depot"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.env.pop("CAS_DEBUG", None)

    def argv(self, release: str, *cmd: str, mp: Path | None = None) -> list[str]:
        return [*CAS, "exec", "--config", str(self.kit.config), "--mountpoint",
                str(mp or self.mp), release, "--", *cmd]

    def run(self, release: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(release, *cmd), capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def start(self, release: str, *cmd: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(release, *cmd), env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)

    def leftovers(self) -> list[int]:
        """PIDs of processes that mention this test's folder (daemons, commands)."""
        mine, out = str(self.kit.base), []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if mine.encode() in cmdline:
                out.append(int(d))
        return out

    def status_files(self) -> list[Path]:
        folder = self.kit.base / "state" / "mounts"
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    def assert_clean(self) -> None:
        """Nothing mounted, no daemon or command left, no status file."""
        deadline = time.monotonic() + 10
        while (self.leftovers() or self.status_files()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not mounted(self.mp)
        assert self.leftovers() == [], "processes left behind"
        assert self.status_files() == []


@pytest.fixture
def ex(kit: Kit) -> Iterator[Exec]:
    src = kit.base / "src"
    (src / "bin").mkdir(parents=True)
    (src / "hello.txt").write_text("hello from the release\n")
    (src / "bin" / "tool").write_text("#!/bin/sh\necho tool ran\n")
    os.chmod(src / "bin" / "tool", 0o755)
    kit.publish("rel", 1, kit.put(src))
    kit.publish("bad", 1, kit.put(src), key=kit.other_key)
    e = Exec(kit)
    try:
        yield e
    finally:
        for pid in e.leftovers():  # only ever processes naming this test's tmp folder
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    assert not mounted(e.mp)


def test_command_sees_release_and_status_propagates(ex: Exec) -> None:
    out = ex.kit.base / "out.txt"
    res = ex.run("rel", "sh", "-c", f'cat "{ex.mp}/hello.txt" > "{out}"; '
                                    f'"{ex.mp}/bin/tool" >> "{out}"; exit 3')
    assert res.returncode == 3, res.stderr
    assert out.read_text() == "hello from the release\ntool ran\n"
    assert "Traceback" not in res.stderr
    ex.assert_clean()


def test_mount_is_private_to_the_command(ex: Exec) -> None:
    marker = ex.kit.base / "marker"
    inside = ex.kit.base / "inside-mounts"
    proc = ex.start("rel", "sh", "-c", f'cat /proc/self/mounts > "{inside}"; '
                                       f'cp "{ex.mp}/hello.txt" "{marker}.tmp"; '
                                       f'mv "{marker}.tmp" "{marker}"; sleep 1')
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command never ran"
            time.sleep(0.02)
        # The command is running (sleeping) with the release mounted ...
        assert marker.read_text() == "hello from the release\n"
        assert f" {ex.mp} fuse.cas " in inside.read_text()
        # ... but the host's mount table does not show it.
        host = Path("/proc/self/mounts").read_text()
        assert str(ex.mp) not in host
        assert not mounted(ex.mp)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    ex.assert_clean()


@pytest.mark.parametrize("cmd, code", [
    (["false"], 1),
    (["sh", "-c", "kill -9 $$"], 128 + 9),
    (["sh", "-c", "kill -TERM $$"], 128 + 15),
    (["/nonexistent/command"], 127),
])
def test_failing_or_killed_command_is_cleaned_up(ex: Exec, cmd: list[str], code: int) -> None:
    res = ex.run("rel", *cmd)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    ex.assert_clean()


@pytest.mark.parametrize("delay", [0.05, 0.4, 0.8, 2.0])
def test_sigterm_to_the_job_unmounts(ex: Exec, delay: float) -> None:
    """A batch system's SIGTERM to the whole job, at any moment (also mid-mount)."""
    marker = ex.kit.base / "started"
    proc = ex.start("rel", "sh", "-c", f'touch "{marker}"; sleep 20')
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert code != 0
    if marker.exists():
        assert code == 128 + signal.SIGTERM
    ex.assert_clean()


def test_sigterm_to_cas_exec_only_reaches_the_command(ex: Exec) -> None:
    marker = ex.kit.base / "started"
    proc = ex.start("rel", "sh", "-c", f'touch "{marker}"; sleep 20')
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # the outer process alone, not its group
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 10  # the sleep was ended, not waited for
    ex.assert_clean()


def test_busy_mount_left_by_the_command_is_detached(ex: Exec) -> None:
    res = ex.run("rel", "sh", "-c", f'cd "{ex.mp}" && (sleep 2 &)')
    assert res.returncode == 0, res.stderr
    ex.assert_clean()


def test_bad_release_runs_nothing(ex: Exec) -> None:
    marker = ex.kit.base / "ran"
    res = ex.run("bad", "touch", str(marker))
    assert res.returncode == UntrustedKey.exit_code
    assert "untrusted key" in res.stderr
    assert not marker.exists()
    ex.assert_clean()


def test_parallel_execs_same_config_and_mountpoint(ex: Exec) -> None:
    """Two jobs mount different releases at the SAME path with the SAME config."""
    src2 = ex.kit.base / "src2"
    src2.mkdir()
    (src2 / "hello.txt").write_text("second release\n")
    ex.kit.publish("rel2", 1, ex.kit.put(src2))
    cas = " ".join(CAS)
    procs = {}
    for name in ("rel", "rel2"):
        out = ex.kit.base / f"{name}.out"
        script = (f'cat "{ex.mp}/hello.txt" > "{out}.content"; '
                  f'{cas} --json status --config "{ex.kit.config}" "{ex.mp}" > "{out}.status"; '
                  f'touch "{out}.ready"; '
                  # wait until the other job is up too, so the two mounts overlap
                  f'for i in $(seq 100); do [ -e "{ex.kit.base}/rel.out.ready" ] && '
                  f'[ -e "{ex.kit.base}/rel2.out.ready" ] && break; sleep 0.1; done; '
                  f'ls "{ex.kit.base}/state/mounts" > "{out}.files"; '
                  f'{cas} -q umount --config "{ex.kit.config}" "{ex.mp}" && '
                  f'echo unmounted > "{out}.umount"; '
                  f'cat "{ex.mp}/hello.txt" 2>/dev/null; exit 0')
        procs[name] = ex.start(name, "sh", "-c", script)
    try:
        codes = {name: p.wait(60) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
    errs = {name: p.stderr.read() for name, p in procs.items()}
    assert codes == {"rel": 0, "rel2": 0}, errs

    pids = set()
    for name, content in (("rel", "hello from the release\n"), ("rel2", "second release\n")):
        base = ex.kit.base / f"{name}.out"
        assert Path(f"{base}.content").read_text() == content
        st = json.loads(Path(f"{base}.status").read_text())
        assert st["release"] == name and st["mounted"] and st["alive"]
        pids.add(st["pid"])
        # Both daemons had their own status file at the same time.
        files = Path(f"{base}.files").read_text().split()
        assert len([f for f in files if f.endswith(".json")]) == 2, files
        # `cas umount MP` from inside the namespace found its own daemon.
        assert Path(f"{base}.umount").read_text() == "unmounted\n"
    assert len(pids) == 2
    ex.assert_clean()


def test_mountpoint_already_mounted_on_host(ex: Exec, mounter) -> None:
    from casstore.errors import MountError

    mp = mounter.mount("rel", name="hostmnt")
    marker = ex.kit.base / "ran"
    res = subprocess.run(ex.argv("rel", "touch", str(marker), mp=mp), capture_output=True,
                         text=True, env=ex.env, timeout=60)
    assert res.returncode == MountError.exit_code, res.stderr
    assert "already a mount point" in res.stderr and not marker.exists()
    assert (mp / "hello.txt").read_text() == "hello from the release\n"  # host mount intact
    assert mounter.procs[-1][0].poll() is None


def test_sigkill_of_cas_exec_still_unmounts(ex: Exec) -> None:
    """A batch system's SIGKILL leaves no FUSE daemon behind: it detaches itself."""
    marker = ex.kit.base / "running"
    proc = ex.start("rel", "sh", "-c", f'touch "{marker}"; sleep 30')
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        daemons = [json.loads(p.read_text())["pid"] for p in ex.status_files()]
        assert len(daemons) == 1
        os.killpg(proc.pid, signal.SIGKILL)  # cas exec, inner process and command
        proc.wait(10)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{daemons[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{daemons[0]}").exists(), "the daemon outlived its owner"
        ex.assert_clean()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
