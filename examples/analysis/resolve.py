"""Re-resolve examples/analysis/{Project,Manifest}.toml with real Pkg 1.5.3.

The committed Manifest is exactly what Julia 1.5.3's Pkg writes when it installs
the example's packages from `cas serve` over a registry built from the shared
bundles (../shared/julia-packages).  Run this after changing the package list:

    .venv/bin/python examples/analysis/resolve.py

It builds the registry in a temporary store, serves it on 127.0.0.1 (port 0),
develops the site's own packages (Cas*) by relative path, adds the registered
ones, and copies the two files back.  Nothing else touches the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared" / "julia-packages"
# The site's own packages, in dependency order (Pkg 1.5 needs an unregistered
# dependency to be in the manifest before a package that uses it is developed).
PATH_PACKAGES = ["CasLorentz", "CasHist", "CasEvents", "CasJets", "CasReport", "CasAnalysis"]
REGISTERED = ["DataFrames", "StatsBase", "JSON", "LorentzVectors", "StaticArrays",
              "CategoricalArrays", "JSON3", "StructArrays", "Setfield", "PrettyTables",
              "DataStructures", "Tables"]
CODE = """
using Pkg
Pkg.activate(".")
for p in ARGS[1:{n}]
    Pkg.develop(PackageSpec(path=joinpath("..", "packages", p)))
end
Pkg.add(ARGS[{n}+1:end])
Pkg.status()
"""


def cas(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "casstore", *args], check=True, **kw)


def main() -> None:
    julia = Path(os.environ.get("CAS_JULIA_PREFIX", "/var/cache/casstore/julia-1.5.3"))
    with tempfile.TemporaryDirectory(prefix="cas-resolve-") as tmp:
        t = Path(tmp)
        store = t / "store"
        cas("keygen", str(t / "k"), capture_output=True)
        cas("--store", str(store), "-q", "registry", "build", str(SHARED / "bundles"),
            "--key", str(t / "k"), "--repo-urls", str(SHARED / "packages.toml"))
        srv = subprocess.Popen([sys.executable, "-m", "casstore", "serve", str(store),
                                "--listen", "127.0.0.1:0", "--trusted-key", str(t / "k.pub"),
                                "--cache", str(t / "cache")], stdout=subprocess.PIPE)
        try:
            line = srv.stdout.readline().decode()  # type: ignore[union-attr]
            url = line.split("listening on ")[1].strip()
            work = t / "analysis"
            work.mkdir()
            shutil.copytree(REPO / "examples" / "packages", t / "packages")
            env = {k: v for k, v in os.environ.items() if not k.startswith("JULIA_")}
            env.update(JULIA_DEPOT_PATH=str(t / "depot"), JULIA_PKG_SERVER=url,
                       JULIA_PKG_PRECOMPILE_AUTO="0", no_proxy="127.0.0.1")
            subprocess.run([str(julia / "bin" / "julia"), "--startup-file=no", "-e",
                            CODE.format(n=len(PATH_PACKAGES)), *PATH_PACKAGES, *REGISTERED],
                           cwd=work, env=env, check=True)
        finally:
            srv.terminate()
            srv.wait(30)
        for f in ("Project.toml", "Manifest.toml"):
            shutil.copy(work / f, HERE / f)
    print(f"wrote {HERE}/Project.toml and Manifest.toml")


if __name__ == "__main__":
    main()
