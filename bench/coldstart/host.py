"""What machine a benchmark ran on (shared by bench/bench_julia.py and bench.coldstart)."""

from __future__ import annotations

import os
import platform


def host_info() -> dict:
    import archspec.cpu

    from casstore.releases.variants import host_levels

    host = archspec.cpu.host()
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f
                      if ln.startswith("model name")), "?")
    mem_kb = next(int(ln.split()[1]) for ln in open("/proc/meminfo")
                  if ln.startswith("MemTotal:"))
    return {"archspec": host.name, "vendor": host.vendor, "cpu_model": model,
            "cores": os.cpu_count(), "levels": host_levels(), "kernel": platform.release(),
            "mem_gb": round(mem_kb / 1024 / 1024, 1)}
