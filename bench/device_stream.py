"""Device memory against input count, and batch-1 latency against intra-op threads, before and after.

Builds a tiny bundle (random-init timm test_vit at 32 px, IPC 2, 3 classes; as tests/conftest.py's
``packed`` fixture), writes N small PNGs (24x24, copies of 3 distinct images) as an ImageFolder,
then measures in a fresh subprocess each: the peak RSS (ru_maxrss of the child) of

    edgedd predict BUNDLE IMG_1 ... IMG_N            (text output)
    edgedd deploy-check BUNDLE --data DIR --no-fine-tune --json

for each N and for each edgedd source tree given (``--tree NAME=PATH``: PATH on PYTHONPATH, e.g.
an unpacked ``git archive`` of the base commit for "before"; "after" is this checkout). Then the
batch-1 latency (p50/p95/p99 of 200 runs, 3 graphs) at onnxruntime's default threads and at
1 and 2 intra-op threads, interleaved in one process (paired; the machine may be shared).

    python bench/device_stream.py --work /tmp/stream --sizes 200 5000 15000 --tree before=/path/to/base
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_bundle(work: Path) -> Path:
    bundle = work / "bundle"
    if (bundle / "edgedd.artifact.safetensors").is_file():
        return bundle
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_image_folder

    from edgedd.core.config import DistillConfig, StageIConfig
    from edgedd.distillation.pipeline import RunOptions, distill
    from edgedd.export.pack import PackConfig, pack

    os.environ.setdefault("EDGEDD_CACHE_DIR", str(work / "cache"))
    data = make_image_folder(work / "data")
    distill(
        str(data),
        "test_vit",
        work / "run",
        weights="random",
        config=DistillConfig(ipc=2, iterations=30),
        stage1_config=StageIConfig(golden_views=4, golden_epochs=10, golden_lr=1e-2),
        options=RunOptions(device="cpu", num_workers=0, progress=False),
        crop_res=32,
        syn_res=32,
    )
    pack(work / "run", bundle, config=PackConfig(views=8, projector_epochs=100), device="cpu")
    return bundle


def write_images(work: Path, n: int) -> tuple[Path, list[str]]:
    from PIL import Image

    root = work / f"images_{n}"
    classes = ("circle", "square", "stripes")
    files = [str(root / classes[i % 3] / f"{i:05d}.png") for i in range(n)]
    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == n:
        return root, files
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    seeds = []
    for c in classes:
        (root / c).mkdir(parents=True)
        seeds.append(root / c / "seed.tmp")
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(seeds[-1], format="PNG")
    for i, f in enumerate(files):
        shutil.copy(seeds[i % 3], f)
    for s in seeds:
        s.unlink()
    return root, files


MEASURE = (
    "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
    "stderr=subprocess.PIPE, text=True); "
    "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
    "p.stderr.strip()[-200:].replace(chr(10), ' '))"
)


def peak_rss(tree: str | None, argv: list[str]) -> tuple[int, float, str]:
    """(exit code, peak RSS in MB, stderr tail) of ``python -m edgedd ARGV`` with ``tree`` first on PYTHONPATH."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEDD_PROGRESS": "0"}
    if tree:
        env["PYTHONPATH"] = tree
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "edgedd", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        check=True,
    ).stdout.split(" ", 2)
    return int(out[0]), float(out[1]), out[2].strip()


def latency_table(bundle: Path, runs: int = 200, rounds: int = 5) -> dict:
    """Batch-1 latency at the default thread pool and at 1 and 2 intra-op threads, interleaved ``rounds`` times."""
    from edgedd.device.bundle import open_bundle, open_sessions
    from edgedd.device.finetune import synthetic_pixels
    from edgedd.device.inputs import prepare_canvases
    from edgedd.device.latency import latency_ms

    b = open_bundle(bundle)
    x1 = prepare_canvases(b, synthetic_pixels(b))[:1]
    times: dict[str, list] = {"default": [], "1": [], "2": []}
    for _ in range(rounds):
        for name in times:
            open_sessions(b, None if name == "default" else int(name))
            times[name].append(latency_ms(b, x1, runs=runs))
    return {k: [float(np.median([t[i] for t in v])) for i in range(3)] for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 5000, 15000])
    ap.add_argument(
        "--tree", action="append", default=[], help="NAME=PATH of an edgedd source tree to measure (repeatable)"
    )
    ap.add_argument("--skip-rss", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(args.work)
    trees = [t.split("=", 1) for t in args.tree] + [["after", str(ROOT)]]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}"
    )
    rows = []
    for n in [] if args.skip_rss else args.sizes:
        folder, files = write_images(args.work, n)
        for name, tree in trees:
            pr = peak_rss(tree, ["predict", str(bundle), *files])
            dc = peak_rss(tree, ["deploy-check", str(bundle), "--data", str(folder), "--no-fine-tune", "--json"])
            rows.append(
                {
                    "tree": name,
                    "images": n,
                    "predict_rc": pr[0],
                    "predict_mb": pr[1],
                    "deploy_rc": dc[0],
                    "deploy_mb": dc[1],
                }
            )
            print(
                json.dumps(rows[-1]),
                pr[2][:120] if pr[0] else "",
                dc[2][:120] if dc[0] not in (0, 3) else "",
                flush=True,
            )
    lat = latency_table(bundle)
    print("latency ms (p50, p95, p99), batch 1:", json.dumps(lat))


if __name__ == "__main__":
    main()
