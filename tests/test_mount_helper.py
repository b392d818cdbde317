"""``mount.fuse.cas``: real mount(8) (``mount -t fuse.cas``, an fstab line) runs the helper.

Every mount happens in a private mount namespace (``unshare -m --propagation
private``), so the host's table never changes.  There, the test lays a copy of
``/usr/sbin`` (symlinks) with ``mount.fuse.cas`` pointing at the ``mount.fuse.cas``
console script installed into THIS venv (what a wheel install gives) over
``/usr/sbin``: the test runs this code whatever ``tools/setup`` installed on the
host.  A trap unmounts lazily on any exit, and the fixture ends only processes that
name the test's own folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casstore.cli.mount_helper import parse_argv
from casstore.errors import UntrustedKey, UsageError

from fuse_fixtures import ROOT, Kit, mounted

HELPER = Path(sys.executable).parent / "mount.fuse.cas"
needs_ns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                              reason="needs root and unshare(1)")

# Runs inside the private namespace: $1 base folder, $2 helper, then the test's body.
PRELUDE = r'''
set -u
base=$1; helper=$2; shift 2
mkdir -p "$base/realsbin" "$base/sbin"
mount --bind /usr/sbin "$base/realsbin"
for f in "$base"/realsbin/*; do ln -s "$f" "$base/sbin/"; done
ln -sfn "$helper" "$base/sbin/mount.fuse.cas"
mount --bind "$base/sbin" /usr/sbin
trap 'umount -l "$base/mnt" 2>/dev/null; true' EXIT
'''


def leftovers(base: Path) -> list[int]:
    """PIDs of processes whose command line names ``base`` (daemons we started)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                if str(base).encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    out.append(int(d))
            except OSError:
                pass
    return out


@pytest.fixture
def rel(kit: Kit) -> Iterator[Kit]:
    src = kit.base / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello through mount(8)\n")
    kit.publish("rel", 1, kit.put(src))
    kit.publish("bad", 1, kit.put(src), key=kit.other_key)
    (kit.base / "mnt").mkdir()
    try:
        yield kit
    finally:
        for pid in leftovers(kit.base):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while leftovers(kit.base) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not mounted(kit.base / "mnt"), "the host table changed"


def in_namespace(kit: Kit, body: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run shell ``body`` in a fresh private mount namespace (after PRELUDE)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CAS_DEBUG", "CAS_CONFIG")}
    env["PYTHONPATH"] = "/nonexistent"  # the helper must not need it (it runs python -I)
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           PRELUDE + body, "sh", str(kit.base), str(HELPER)],
                          capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=kit.base)


# What every mount test does once the mount exists: read, note the daemon, unmount
# with umount(8), then wait (with a deadline) for the daemon to exit.
READ_AND_UMOUNT = r'''
grep " $base/mnt " /proc/self/mounts | cut -d' ' -f1,3 > "$base/table"
cat "$base/mnt/hello.txt" > "$base/read"
cat "$base"/state/mounts/*.json > "$base/status.json"
pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' "$base/status.json")
umount "$base/mnt"; echo "umount=$?" > "$base/umount"
for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
kill -0 "$pid" 2>/dev/null && echo alive > "$base/daemon" || echo gone > "$base/daemon"
'''


def check_mounted_read_unmounted(kit: Kit, source: str = "rel") -> None:
    """``source``: the mount table shows the source as mount(8) was given it, so that
    mount(8) (``mount -a``) finds an fstab line's mount already there."""
    b = kit.base
    assert (b / "table").read_text().split() == [source, "fuse.cas"]
    assert (b / "read").read_text() == "hello through mount(8)\n"
    st = json.loads((b / "status.json").read_text())
    assert st["release"] == "rel" and st["revision"] == 1 and st["owner"] is None
    assert (b / "umount").read_text() == "umount=0\n"
    assert (b / "daemon").read_text() == "gone\n"
    assert list((b / "state" / "mounts").glob("*.json")) == []


@pytest.mark.slow
@needs_ns
def test_mount_t_fuse_cas_reads_and_umounts(rel: Kit) -> None:
    """mount(8) -> helper -> daemon: returns only once the mount answers (the read
    right after it succeeds), with systemd/fstab-only options dropped, not refused."""
    res = in_namespace(rel, f'''
mount -t fuse.cas rel "$base/mnt" -o config={rel.config},_netdev,nofail,x-systemd.automount,ro
echo "mount=$?" > "$base/mount"
{READ_AND_UMOUNT}''')
    assert (rel.base / "mount").read_text() == "mount=0\n", res.stderr
    assert res.stdout == "", res.stdout  # a mount helper is silent on success
    check_mounted_read_unmounted(rel)


@pytest.mark.slow
@needs_ns
def test_fstab_line_mounts_by_mountpoint(rel: Kit) -> None:
    """An /etc/fstab line (here a private fstab, ``mount -T FILE``): ``mount /depot``."""
    (rel.base / "fstab").write_text(
        f"# release  mountpoint  type  options  dump pass\n"
        f"rel {rel.base}/mnt fuse.cas config={rel.config},noauto,_netdev,nofail,"
        f"x-systemd.requires=network-online.target 0 0\n")
    res = in_namespace(rel, f'''
mount -T "$base/fstab" "$base/mnt"; echo "mount=$?" > "$base/mount"
{READ_AND_UMOUNT}''')
    assert (rel.base / "mount").read_text() == "mount=0\n", res.stderr
    check_mounted_read_unmounted(rel)



@needs_ns
def test_fstab_mount_a_twice_is_idempotent(rel: Kit) -> None:
    """The documented fstab form (``NAME /depot fuse.cas ...``): a second ``mount -a``
    sees the mount as there (exit 0), and the table still holds it once."""
    (rel.base / "fstab").write_text(
        f"rel {rel.base}/mnt fuse.cas config={rel.config},_netdev,nofail 0 0\n")
    res = in_namespace(rel, f'''
mount -a -T "$base/fstab"; echo "first=$?" > "$base/mount"
mount -a -T "$base/fstab"; echo "second=$?" >> "$base/mount"
grep -c " $base/mnt fuse.cas " /proc/self/mounts >> "$base/mount"
{READ_AND_UMOUNT}''')
    assert (rel.base / "mount").read_text().split() == ["first=0", "second=0", "1"], res.stderr
    assert "already" not in res.stderr, res.stderr
    check_mounted_read_unmounted(rel, source="rel")

@pytest.mark.slow
@needs_ns
@pytest.mark.parametrize("opts,code,words", [
    ("config={cfg},bogus", UsageError.exit_code, "unknown option 'bogus'"),
    ("config={cfg},revision=abc", UsageError.exit_code, "not a revision number"),
    ("config={base}/missing.toml", UsageError.exit_code, "does not exist"),
    ("config={cfg},config={cfg}", UsageError.exit_code, "given twice"),
])
def test_bad_options_one_line_error_nothing_mounted(rel: Kit, opts: str, code: int,
                                                     words: str) -> None:
    o = opts.format(cfg=rel.config, base=rel.base)
    res = in_namespace(rel, f'''
mount -t fuse.cas rel "$base/mnt" -o {o}; rc=$?
grep -q " $base/mnt " /proc/self/mounts && echo mounted > "$base/state-after"
exit $rc''')
    assert res.returncode == code, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("cas: error:"), res.stderr
    assert words in lines[0]
    assert not (rel.base / "state-after").exists()


@pytest.mark.slow
@needs_ns
def test_refused_release_gives_cas_mount_exit_status(rel: Kit) -> None:
    """The helper's status is ``cas mount``'s: a release signed by an untrusted key."""
    res = in_namespace(rel, f'mount -t fuse.cas bad "$base/mnt" -o config={rel.config}')
    assert res.returncode == UntrustedKey.exit_code, res.stderr
    assert "untrusted key" in res.stderr and "Traceback" not in res.stderr


def test_helper_argv_model() -> None:
    """mount(8)'s argument shapes, without mounting: options map to ``cas mount``."""
    a = parse_argv(["cas:rel@3", "/depot", "-n", "-o",
                    "config=/etc/c.toml,arch=x86-64,noprefetch,defaults,x-systemd.idle-timeout=5,"
                    "comment=systemd.automount", "-t", "fuse.cas"])
    assert a.argv() == ["mount", "rel@3", "/depot", "--fsname", "cas:rel@3", "--config",
                        "/etc/c.toml", "--arch", "x86-64", "--no-prefetch"]
    assert a.dropped == ["defaults", "x-systemd.idle-timeout=5", "comment=systemd.automount"]
    assert parse_argv([":rel", "/depot", "-fv"]).fake and parse_argv([":rel", "/d"]).source == "rel"
    sloppy = parse_argv(["rel", "/depot", "-s", "-o", "whatever=1"])
    assert sloppy.dropped == ["whatever=1"] and sloppy.warnings
    for bad in (["rel"], ["rel", "/d", "-t", "fuse.sshfs"], ["rel", "/d", "-o", "noprefetch=1"],
                ["rel", "/d", "-o", "arch="], ["rel", "/d", "-x"]):
        with pytest.raises(UsageError):
            parse_argv(bad)


def _status_all(kit: Kit) -> tuple[list[dict], str]:
    from fuse_fixtures import run_cas

    js = run_cas("--json", "status", "--all", "--config", str(kit.config))
    txt = run_cas("status", "--all", "--config", str(kit.config))
    assert js.returncode == 0 and txt.returncode == 0, js.stderr + txt.stderr
    assert "Traceback" not in js.stderr + txt.stderr
    return json.loads(js.stdout), txt.stdout


@pytest.mark.slow
@needs_ns
def test_status_all_shows_cas_exec_mount_with_namespace_and_owner(rel: Kit) -> None:
    """A running ``cas exec`` job's private mount is listed on the host with its
    namespace id, daemon PID and owner PID; a stale file of a dead daemon is listed
    as dead (not used, no traceback), a damaged one as damaged."""
    from fuse_fixtures import CAS

    go, inside = rel.base / "go", rel.base / "inside"
    script = (f'readlink /proc/self/ns/mnt > "{inside}"; '
              f'for i in $(seq 600); do [ -e "{go}" ] && exit 0; sleep 0.1; done; exit 9')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CAS_DEBUG", None)
    job = subprocess.Popen([*CAS, "exec", "--config", str(rel.config), "--mountpoint",
                            str(rel.base / "mnt"), "rel", "--", "sh", "-c", script],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not inside.exists() or not inside.read_text().strip():
            assert job.poll() is None, job.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ns = inside.read_text().strip().partition("[")[2].rstrip("]")
        runs = rel.base / "state" / "mounts"
        # A stale file (daemon long gone) and a damaged one beside the live one.
        (runs / "%2Fgone@4026530000.json").write_text(json.dumps(
            {"pid": 2**22 + 12345, "mountpoint": "/gone", "release": "old", "revision": 1}))
        (runs / "%2Fbroken@1.json").write_text("{not json")
        rows, text = _status_all(rel)
        live = [r for r in rows if r.get("mountpoint") == str(rel.base / "mnt")]
        assert len(live) == 1, rows
        row = live[0]
        owner = row["owner"]
        assert row["state"] == "mounted" and row["mount_ns"] == ns and row["release"] == "rel"
        assert Path(f"/proc/{row['pid']}/ns/mnt").exists()
        assert os.readlink(f"/proc/{row['pid']}/ns/mnt") == f"mnt:[{ns}]"  # daemon in the job's ns
        assert os.readlink(f"/proc/{owner}/ns/mnt") == f"mnt:[{ns}]"  # the inner cas exec
        assert "exec" in Path(f"/proc/{owner}/cmdline").read_bytes().decode(errors="replace")
        assert os.readlink("/proc/self/ns/mnt") != f"mnt:[{ns}]"  # listed from the host
        assert not mounted(rel.base / "mnt")
        stale = [r for r in rows if r.get("mountpoint") == "/gone"]
        assert [r["state"] for r in stale] == ["dead"]
        assert [r["state"] for r in rows if (r.get("status_file") or "").endswith("broken@1.json")
                ] == ["damaged"]
        line = next(ln for ln in text.splitlines() if ln.startswith(str(rel.base / "mnt")))
        assert line.split()[4:8] == [ns, str(row["pid"]), str(owner), "mounted"], line
        assert any(ln.startswith("/gone") and ln.rstrip().endswith("dead")
                   for ln in text.splitlines()), text
    finally:
        go.touch()
        try:
            job.wait(60)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(10)
    assert job.returncode == 0, job.stderr.read()
