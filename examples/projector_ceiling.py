"""How far can Classifier Inheritance go across networks? The projector fitted on *real* images.

The device fits a linear projector P: phi_B -> phi_A on the views of the synthetic images and keeps
A's golden classifier g on top: top-1 of g(P(phi_B(x))). However good the synthetic set, it cannot
teach P more than the same number of *real* images would. This script measures that ceiling on
embedded:mnist, independently of any distillation: for each host A, the golden classifier is
Stage I's converged recipe on A's centre-crop features of the 4,000 training digits; P is the
device's closed-form ridge fit (edgedd.device.ridge, its cross-validated strength, the prior pack
would record) on B's and A's features of

* IPC real images per class (the synthetic set's budget; ``--draws`` random draws, centre crops), and
* all 4,000 training images,
* and, with ``--synthetic RUN`` (repeatable, runs distilled through the host), the run's own IPC
  synthetic images per class (their centre crops as the device renders them; the run's host must
  be the ``--host`` given, at the same input size): what the synthetic set teaches the projector
  against what the same number of real images does,

then top-1 on the 1,000 test digits. B's own full-data probe (the same recipe on phi_B) is the
column every CI figure is compared with. Run:

    python examples/projector_ceiling.py --out bench/results/cross/ceiling.json

(about 10 minutes on 2 CPU cores: one feature pass per backbone, one golden fit per backbone).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from edgedd.backbones.forward import encode
from edgedd.backbones.loader import load_backbone
from edgedd.core.config import StageIConfig
from edgedd.core.images import open_dataset
from edgedd.device.ridge import fit_ridge, projector_prior, select_ridge
from edgedd.distillation.rundir import load_run
from edgedd.distillation.stage1 import train_golden
from edgedd.host.augment import center_crop, eval_view
from edgedd.host.data import canvas_loader

SPECS = ("edgedd/host-vit", "edgedd/efficientnet-lite1@96", "edgedd/efficientnet-lite0@96")


@torch.no_grad()
def features(spec: str, data: str) -> tuple[np.ndarray, np.ndarray, str]:
    """phi of every image of ``data``: resize to the backbone's resize size, centre crop, encode."""
    name, _, res = spec.partition("@")
    model, info = load_backbone(name, "hub", input_size=int(res) if res else None, device="cpu", seed=0)
    pp = info.preprocess
    feats, labels = [], []
    for images, y, _ in canvas_loader(open_dataset(data), pp.resize_size, pp.interpolation, 256, 0):
        feats.append(encode(model, center_crop(images.float().div_(255), pp.input_size), pp).numpy())
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels), info.weights_sha256


@torch.no_grad()
def synthetic_features(spec: str, run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """phi of a run's synthetic images: the canvas resized to the backbone's resize size, centre crop."""
    name, _, res = spec.partition("@")
    model, info = load_backbone(name, "hub", input_size=int(res) if res else None, device="cpu", seed=0)
    run = load_run(run_dir)
    x = eval_view(run.images, info.preprocess.resize_size, info.preprocess.input_size)
    return encode(model, x, info.preprocess).numpy(), run.labels.numpy()


def golden(feats: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    w, b, rep = train_golden(
        torch.from_numpy(feats)[:, None], labels, 10, StageIConfig(golden_views=1), torch.device("cpu"), progress=False
    )
    return w.numpy(), b.numpy(), rep


def top1(feats: np.ndarray, labels: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    return float(((feats @ w.T + b).argmax(1) == labels).mean())


def ci_top1(xb, xa, idx, y_train, prior, test_b, y_test, g) -> dict:
    """Fit P on the images ``idx`` (one centre view each) as the device would, then top-1."""
    ridge, _ = select_ridge(xb[idx], xa[idx], np.arange(len(idx)), y_train[idx], prior=prior, classifier=g[0])
    p, pb = fit_ridge(xb[idx], xa[idx], ridge, prior)
    return {"top1": top1(test_b @ p.T + pb, y_test, *g), "ridge": ridge}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", action="append", help=f"backbone A, optionally @input size [default: {', '.join(SPECS)}]")
    ap.add_argument("--edge", default="edgedd/efficientnet-lite0@96", help="backbone B")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument(
        "--synthetic",
        action="append",
        default=[],
        help="a run distilled through --host (one host only): fit P on its images",
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results/cross/ceiling.json"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    cache = {}

    def feats(spec):
        if spec not in cache:
            tr, y_tr, sha = features(spec, "embedded:mnist")
            te, y_te, _ = features(spec, "embedded:mnist/test")
            cache[spec] = (tr, y_tr, te, y_te, sha)
            print(f"features of {spec}: {tr.shape[1]} dims ({time.perf_counter() - t0:.0f} s)", flush=True)
        return cache[spec]

    xb, y, tb, y_te, sha_b = feats(a.edge)
    wb, bb, rep_b = golden(xb, y)
    rows = []
    for spec in a.host or SPECS:
        xa, ya, ta, _, sha_a = feats(spec)
        assert (ya == y).all(), "both passes read the same images in the same order"
        g = golden(xa, y) if spec != a.edge else (wb, bb, rep_b)
        prior = projector_prior(sha_a, sha_b, xa.shape[1], xb.shape[1])  # what pack would record
        rng = np.random.default_rng(0)
        draws = [
            np.concatenate([rng.choice(np.flatnonzero(y == c), a.ipc, replace=False) for c in range(10)])
            for _ in range(a.draws)
        ]
        row = {
            "host": spec,
            "edge": a.edge,
            "prior": prior,
            "host_golden_top1": top1(ta, y_te, g[0], g[1]),
            "host_golden_train_loss": g[2]["loss_final"],
            "edge_probe_top1": top1(tb, y_te, wb, bb),
            "edge_probe_train_loss": rep_b["loss_final"],
            f"ci_real_ipc{a.ipc}": [ci_top1(xb, xa, d, y, "none", tb, y_te, g[:2]) for d in draws],
            "ci_real_all": ci_top1(xb, xa, np.arange(len(y)), y, "none", tb, y_te, g[:2]),
        }
        for run_dir in a.synthetic:
            sb, ys = synthetic_features(a.edge, run_dir)
            sa, _ = synthetic_features(spec, run_dir)
            xs, xa_s = np.concatenate([xb, sb]), np.concatenate([xa, sa])
            idx = np.arange(len(y), len(y) + len(ys))
            row.setdefault("ci_synthetic", []).append(
                {"run": run_dir, **ci_top1(xs, xa_s, idx, np.concatenate([y, ys]), "none", tb, y_te, g[:2])}
            )
        if prior == "identity":
            row[f"ci_real_ipc{a.ipc}_identity_prior"] = [ci_top1(xb, xa, d, y, prior, tb, y_te, g[:2]) for d in draws]
        rows.append(row)
        print(json.dumps(row), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps({"ipc": a.ipc, "draws": a.draws, "rows": rows, "seconds": time.perf_counter() - t0}, indent=2)
    )
    k = f"ci_real_ipc{a.ipc}"
    print(
        f"\n| host A | edge B | A's golden | B's probe | CI, {a.ipc} real/class (P fit on them) | CI, all 4,000 real "
        "|\n|---|---|---|---|---|---|"
    )
    for r in rows:
        ipc = [c["top1"] for c in r[k]]
        extra = ""
        if f"{k}_identity_prior" in r:
            idp = [c["top1"] for c in r[f"{k}_identity_prior"]]
            extra = f"; identity prior {100 * np.mean(idp):.1f} ± {100 * np.std(idp):.1f}"
        print(
            f"| `{r['host']}` | `{r['edge']}` | {100 * r['host_golden_top1']:.1f} | {100 * r['edge_probe_top1']:.1f} | "
            f"{100 * np.mean(ipc):.1f} ± {100 * np.std(ipc):.1f}{extra} | {100 * r['ci_real_all']['top1']:.1f} |"
        )
        for c in r.get("ci_synthetic", []):
            print(
                f"| `{r['host']}` | `{r['edge']}` | | | synthetic `{c['run']}`: {100 * c['top1']:.1f} (r = "
                f"{c['ridge']:g}) | |"
            )


if __name__ == "__main__":
    main()
