"""Developer entry point until `cas depot build` exists:

    python -m casstore.julia SPEC.toml OUT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from casstore.julia.builder import build_depot


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    t0 = time.monotonic()
    res = build_depot(Path(argv[0]), Path(argv[1]),
                      lambda m: print(f"{time.monotonic() - t0:7.1f} {m}", file=sys.stderr))
    print(json.dumps({"root": str(res.root), "baseline": res.baseline,
                      "variants": {k: str(v) for k, v in res.variants.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
