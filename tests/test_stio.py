"""The deterministic safetensors writer: readable by the safetensors library, same bytes in every process."""

import subprocess
import sys

import numpy as np
from safetensors.numpy import load

from edgedd.core.stio import serialize

SCRIPT = """
import sys, numpy as np
from edgedd.core.stio import serialize
t = {n: np.arange(6, dtype=d).reshape(2, 3) \
for n, d in [("b", np.float32), ("a", np.uint8), ("c", np.int64), ("z", np.float64)]}
sys.stdout.buffer.write(serialize(t, {k: k * 3 for k in "qwertyuiopasdfgh"}))
"""


def test_readable_by_safetensors():
    t = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4),
        "m": np.array([True, False]),
        "e": np.zeros((0, 2), np.float16),
    }
    got = load(serialize(t, {"k": "v"}))
    assert set(got) == set(t)
    for k in t:
        np.testing.assert_array_equal(got[k], t[k])
        assert got[k].dtype == t[k].dtype


def test_same_bytes_in_every_process():
    # metadata key order is randomised per process by the safetensors library; not here
    outs = {subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, check=True).stdout for _ in range(4)}
    assert len(outs) == 1
