"""Runs inside one node's ``cas exec`` (its private mount namespace, ``/depot`` mounted).

Standard library only and started as a plain script, so that it costs the node as
little as possible: the moment its first line runs is the moment ``/depot`` was
usable (``T_START``; the outer process knows when it started ``cas exec``, the
difference is the mount).  It runs the plan's steps one by one, each a fresh
process, writes each step's stdout/stderr to files next to the plan (the file
system is shared, only mounts are private), and at the end snapshots what the
mount daemon reports in its status file (prefetch progress, file cache) and the
daemon's own CPU seconds, which no rusage of ours can see (it is daemonised).

Usage: python inner.py PLAN.json  ->  PLAN.result.json
"""

from __future__ import annotations

import time

T_START = time.time()  # before the other imports: they are part of this script's cost

import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402


def run_measured(argv: list[str], env: dict | None, timeout: float, out_path: str | None = None,
                 err_path: str | None = None, cwd: str | None = None) -> dict:
    """Run one process to its end; wall (Unix times) and its own rusage (``wait4``).

    Output goes to files (no pipes to drain); on timeout it gets SIGTERM (``cas exec``
    then unmounts), and SIGKILL 60 s later."""
    files = []
    for path in (out_path, err_path):
        files.append(open(path, "w+b") if path else tempfile.TemporaryFile())  # noqa: SIM115
    try:
        t0 = time.time()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=files[0], stderr=files[1],
                                stdin=subprocess.DEVNULL)
        timed_out = threading.Event()

        def stop(sig: int) -> None:
            timed_out.set()
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass

        t_term = threading.Timer(timeout, stop, (signal.SIGTERM,))
        t_kill = threading.Timer(timeout + 60, stop, (signal.SIGKILL,))
        t_term.start()
        t_kill.start()
        _pid, status, ru = os.wait4(proc.pid, 0)
        t1 = time.time()
        t_term.cancel()
        t_kill.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        texts = []
        for f in files:
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
    finally:
        for f in files:
            f.close()
    return {"rc": proc.returncode, "t0": t0, "t1": t1, "wall_s": t1 - t0,
            "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024,
            "timed_out": timed_out.is_set(), "stdout": texts[0], "stderr": texts[1]}


def job_times(stderr: str) -> list[float] | None:
    """The ``CASBENCH_TIMES T0 T1 T2 T3`` stamps of job.jl, if it got that far."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("CASBENCH_TIMES "):
            try:
                return [float(x) for x in line.split()[1:5]]
            except ValueError:
                return None
    return None


def clear(folder: str) -> None:
    """An empty scratch depot (a fresh node's own writable depot)."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)


def daemon_snapshot(run_dir: str) -> dict:
    """The mount daemon's status file (this namespace's mount) and its CPU seconds."""
    ns = os.readlink("/proc/self/ns/mnt").split("[")[-1].rstrip("]")
    out: dict = {}
    for path in glob.glob(os.path.join(run_dir, f"*@{ns}.json")):
        try:
            with open(path) as f:
                out = json.load(f)
        except (OSError, ValueError):
            continue
    pid = int(out.get("pid") or 0)
    if pid:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            tick = os.sysconf("SC_CLK_TCK")
            out["daemon_cpu_s"] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError, IndexError):
            pass
    return out


def origin_counters(url: str) -> list[float] | None:
    """(body bytes, requests) the origin has answered, less its /metrics route (the
    same reading as nodes.Site.origin_counters, which the outer process makes)."""
    import re
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
            body = r.read().decode()
    except OSError:
        return None
    out = [0.0, 0.0]
    names = ("cas_http_response_body_bytes_total", "cas_http_requests_total")
    for line in body.splitlines():
        m = re.match(r"^([a-z_]+)(\{.*\})? (\S+)$", line)
        if m and m.group(1) in names and 'route="/metrics"' not in (m.group(2) or ""):
            out[names.index(m.group(1))] += float(m.group(3))
    return out


def main(plan_path: str) -> None:
    with open(plan_path) as f:
        plan = json.load(f)
    base = plan_path.removesuffix(".json")
    results = []
    for i, step in enumerate(plan["steps"]):
        if step.get("fresh_scratch"):
            clear(step["fresh_scratch"])
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("JULIA_") and k != "LD_LIBRARY_PATH"}
        env.update(step.get("env", {}))
        r = run_measured(step["argv"], env, plan.get("timeout", 3600),
                         f"{base}.{i}.out", f"{base}.{i}.err", step.get("cwd"))
        r["times"] = job_times(r["stderr"])
        r["label"], r["plain"] = step["label"], bool(step.get("plain"))
        r["stdout_path"], r["stderr_path"] = f"{base}.{i}.out", f"{base}.{i}.err"
        del r["stdout"], r["stderr"]
        if plan.get("metrics_url"):  # after the step: not part of any timing
            r["origin"] = origin_counters(plan["metrics_url"])
        if plan.get("cache_dir"):
            r["cache_files"] = sum(len(f) for _d, _s, f in os.walk(plan["cache_dir"]))
        results.append(r)
    snap = daemon_snapshot(plan["run_dir"]) if plan.get("run_dir") else {}
    out = {"t_start": T_START, "steps": results, "daemon": snap, "t_end": time.time()}
    with open(base + ".result.json", "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1])
