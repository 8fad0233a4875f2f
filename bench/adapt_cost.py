"""Time and peak memory of ``edgedd adapt`` beside deploy-check's own projector fit, on the device.

Each measurement is a fresh process (peak RSS is per process): open the bundle, then either
deploy-check's fit (finetune.fine_tune_projector: render the views, phi_B, ridge with its CV) or
adapt (adaptation.adapt_bundle: the same, plus reading the local folder, phi_B of it, and the
cross-validated adapted fit). The two alternate, ``--repeats`` times each, so contention hits both.

    python bench/adapt_cost.py BUNDLE --data K10_FOLDER [--int8] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from edgedd.device.bundle import open_bundle
b = open_bundle(sys.argv[2], int8=sys.argv[3] == "1")
t0 = time.perf_counter()
if sys.argv[1] == "fit":
    from edgedd.device.finetune import fine_tune_projector
    fine_tune_projector(b)
else:
    from edgedd.device.adaptation import adapt_bundle
    r = adapt_bundle(b, sys.argv[4])["report"]
t = time.perf_counter() - t0
print(json.dumps({"seconds": t, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = {"fit": [], "adapt": []}
    for _ in range(a.repeats):
        for what in rows:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, what, str(a.bundle), "1" if a.int8 else "0", str(a.data)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rows[what].append(json.loads(out.strip().splitlines()[-1]))
    print("| step | seconds (median) | peak RSS MB (max) |\n|---|---|---|")
    for what, rs in rows.items():
        s = sorted(r["seconds"] for r in rs)[len(rs) // 2]
        print(
            f"| {'deploy-check fit' if what == 'fit' else 'adapt'} | {s:.2f} | {max(r['peak_rss_mb'] for r in rs):.0f} "
            "|"
        )
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "command": " ".join(sys.argv)}, indent=1))


if __name__ == "__main__":
    main()
