"""One `edgedd adapt` fit in a fresh process, nothing written: open the bundle, then adapt_bundle.

For timing two versions of the code side by side, whole process, with farm-bench (bench/RESULTS.md,
"Time and memory of `adapt`"): put each checkout first on PYTHONPATH.

    python bench/adapt_once.py BUNDLE LOCAL_FOLDER      # prints the fit's seconds
"""

from __future__ import annotations

import sys
import time

from edgedd.device.adaptation import adapt_bundle
from edgedd.device.bundle import open_bundle

if __name__ == "__main__":
    bundle = open_bundle(sys.argv[1])
    t0 = time.perf_counter()
    adapt_bundle(bundle, sys.argv[2])
    print(f"{time.perf_counter() - t0:.3f}")
