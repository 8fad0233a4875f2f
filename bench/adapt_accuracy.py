"""On-device adaptation (edgedd.device.adapt) against its two alternatives, on the device path.

For each bundle and backbone variant (fp32, and int8 when packed): k labelled local images per
class drawn from a training ImageFolder (several draws), scored on a test ImageFolder:

    CI alone   deploy-check's fit (ridge on the synthetic views; strength pack's choice on held-out real
               images when the bundle records one, format 1.6, else by the views' CV)
    probe      a ridge probe on phi_B of the k local images alone (one-hot targets, strength by
               grouped CV over them; 1.0 with one image per class)
    adapt      edgedd.device.adapt.adapt_fit: the views and the local images ((5), or the local probe
               mixed with the CI fit, (6)), chosen by grouped CV over the local images, the views-only
               fit kept when neither wins; the strength moved by the local images' cross-entropy
               (not when pack chose it: edgedd.device.adaptation.local_span)
    adapt@views the same with the strength held at deploy-check's (strength_span 0: the rule before)
    adapt+pl   (with --unlabelled N) adapt with N more unlabelled training images pseudo-labelled by
               the CI fit (the most confident half), added as local images
    CI+align   (with --unlabelled N) the CI fit with phi_B's mean over the local and unlabelled
               images moved onto the views' mean (a bias change; feature-statistics alignment)

    python bench/adapt_accuracy.py BUNDLE... --train mnist_train --test mnist_test [--int8] [--json out.json]

Every backbone pass runs once per variant (pool and test features), then the draws reuse them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from edgedd.device.accuracy import load_labelled_folder, top1
from edgedd.device.adapt import adapt_fit, local_folds
from edgedd.device.adaptation import local_span
from edgedd.device.artifact import ARTIFACT_FILE
from edgedd.device.bundle import open_bundle
from edgedd.device.checks import peak_rss_mb
from edgedd.device.finetune import RIDGE_FROM_VIEWS, fit_features, fit_on_features, view_inputs
from edgedd.device.infer import backbone_features, head
from edgedd.device.local_probe import dual_ridge
from edgedd.device.ridge import RIDGE_GRID


def probe(xl, yl, classes, grid=RIDGE_GRID):
    """Ridge probe phi_B -> one-hot on the local images alone; strength by grouped CV (1.0 for k = 1).
    In its dual form (n x n; edgedd.device.local_probe), the same fit as edgedd.device.ridge.fit_ridge."""
    xl = np.asarray(xl, dtype=np.float64)
    onehot = np.eye(classes, dtype=np.float64)[yl]
    fold, grouped = local_folds(yl)
    r = 1.0
    if grouped:
        right = dict.fromkeys(grid, 0)
        for k in np.unique(fold):
            predict, _ = dual_ridge(xl[fold != k], onehot[fold != k], grid)
            for g, z in predict(xl[fold == k]).items():
                right[g] += int((z.argmax(1) == yl[fold == k]).sum())
        r = max(grid, key=lambda g: (right[g], g))
    return dual_ridge(xl, onehot, (r,))[1](r)


def draw(labels, k, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False) for c in np.unique(labels)])


def image_features(b, int8, train, test, cache_dir):
    """phi_B of the pool and the test images. They depend only on the backbone graph, the bundle's
    classes and preprocessing, and the folders' files, so with a cache folder they are computed once
    per such key and shared by every bundle whose edge graph is byte-identical (pack's export is
    deterministic)."""
    graph = Path(b.graph_files["backbone"])
    listing = [
        (str(f.relative_to(d)), f.stat().st_size, f.stat().st_mtime_ns)
        for d in (train, test)
        for f in sorted(d.rglob("*"))
        if f.is_file()
    ]
    ident = json.dumps(
        [str(train.resolve()), str(test.resolve()), list(b.class_names), b.edge_preprocess, listing], default=str
    )
    key = hashlib.sha256(graph.read_bytes() + ident.encode()).hexdigest()[:16]
    shared = None if cache_dir is None else cache_dir / f"images_{key}.npz"
    if shared is not None and shared.is_file():
        return dict(np.load(shared))
    xt, yt, _ = load_labelled_folder(b, test)
    xp, yp, _ = load_labelled_folder(b, train)
    f = dict(ft=backbone_features(b, xt), yt=yt, fp=backbone_features(b, xp), yp=yp)
    if shared is not None:  # written whole or not at all: a job beside this one may read it
        tmp = shared.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **f)
        os.replace(tmp, shared)
    return f


def cache_name(bundle: Path) -> str:
    """The bundle's folder name and its artifact's sha256: two bundles of one name (every demo writes
    runs/demo/bundle) or a bundle re-packed in place never share cached features."""
    return f"{bundle.name}_{hashlib.sha256((bundle / ARTIFACT_FILE).read_bytes()).hexdigest()[:16]}"


def features(path, int8, train, test, cache):
    """Everything the draws reuse: the views' phi_B and targets, the CI fit, phi_B of the pool and
    the test images; read from / written to ``cache`` (an .npz) when given."""
    if cache is not None and cache.is_file():
        return dict(np.load(cache))
    b = open_bundle(path, int8=int8)
    a = b.artifact
    x_in, yv = view_inputs(b)
    fv = fit_features(b, x_in)
    n, kv = a["targets.boxes"].shape[:2]
    t0 = time.perf_counter()
    ci = fit_on_features(b, fv, yv)
    t_ci = time.perf_counter() - t0
    f = dict(
        fv=fv, yv=yv, vlab=np.repeat(a["synthetic.labels"], kv), wc=a["classifier.weight"], bc=a["classifier.bias"],
        ridge=ci["ridge"], prior=b.meta.get("reference", {}).get("projector_prior", "none"), ciw=ci["weight"],
        ridge_from=ci["ridge_from"],
        cib=ci["bias"], t_ci=t_ci, **image_features(b, int8, train, test, None if cache is None else cache.parent),
    )  # fmt: skip
    if cache is not None:
        np.savez(cache, **f)
    return f


def run_variant(path, int8, train, test, ks, draws, unlabelled, cache=None):
    b = open_bundle(path, int8=int8)
    f = features(path, int8, train, test, cache)
    fv, yv, vlab, wc, bc, ft, yt, fp, yp = (f[k] for k in ("fv", "yv", "vlab", "wc", "bc", "ft", "yt", "fp", "yp"))
    ci = {"weight": f["ciw"], "bias": f["cib"], "ridge": float(f["ridge"])}
    prior, t_ci = str(f["prior"]), float(f.get("t_ci", np.nan))
    ci_top1 = top1(head(b, ft, (ci["weight"], ci["bias"])), yt)
    ci_pool = head(b, fp, (ci["weight"], ci["bias"]))
    # as edgedd adapt: a strength pack chose on held-out real images (format 1.6) is not moved by the local ones
    span = local_span(str(f.get("ridge_from", RIDGE_FROM_VIEWS)))  # caches written before 1.6 hold no source
    rows = []
    for k in ks:
        for d in range(draws):
            idx = draw(yp, k, 1000 * k + d)
            pw, pb = probe(fp[idx].astype(np.float64), yp[idx], len(b.class_names))
            t0 = time.perf_counter()
            ad = adapt_fit(fv, yv, vlab, wc, bc, fp[idx], yp[idx], prior, ci["ridge"], strength_span=span)
            t_ad = time.perf_counter() - t0
            held = adapt_fit(fv, yv, vlab, wc, bc, fp[idx], yp[idx], prior, ci["ridge"], strength_span=0.0)
            row = {
                "k": k,
                "draw": d,
                "ci": ci_top1,
                "probe": top1(ft @ pw.T + pb, yt),
                "adapt": top1(head(b, ft, (ad["weight"], ad["bias"])), yt),
                "adapt_views_strength": top1(head(b, ft, (held["weight"], held["bias"])), yt),
                "strength_from": ad["strength_from"],
                "used": ad["used"],
                "candidate": ad["candidate"],
                "probe_mix": ad["probe_mix"],
                "probe_ridge": ad["probe_ridge"],
                "ridge": ad["ridge"],
                "local_weight": ad["local_weight"],
                "wins": ad["wins"],
                "losses": ad["losses"],
                "adapt_s": t_ad,
                "ci_fit_s": t_ci,
            }
            if unlabelled:
                rest = np.setdiff1d(np.arange(len(yp)), idx)
                u = u0 = np.random.default_rng(7 + d).choice(rest, unlabelled, replace=False)
                conf = np.sort(ci_pool[u], 1)[:, -1] - np.sort(ci_pool[u], 1)[:, -2]
                u = u[conf >= np.median(conf)]
                ad2 = adapt_fit(
                    fv,
                    yv,
                    vlab,
                    wc,
                    bc,
                    np.concatenate([fp[idx], fp[u]]),
                    np.concatenate([yp[idx], ci_pool[u].argmax(1)]),
                    prior,
                    ci["ridge"],
                )
                row["adapt_pl"] = top1(head(b, ft, (ad2["weight"], ad2["bias"])), yt)
                # feature-statistics alignment: the unlabelled images' mean phi_B moved onto the views' mean
                shift = fp[np.concatenate([idx, u0])].mean(0) - fv.mean(0)
                row["ci_align"] = top1(head(b, ft, (ci["weight"], ci["bias"] - ci["weight"] @ shift)), yt)
            rows.append(row)
            print(
                f"{path.name} {'int8' if int8 else 'fp32'} k={k} draw {d}: "
                + ", ".join(
                    f"{c} {100 * row[c]:.1f}"
                    for c in ("ci", "probe", "adapt", "adapt_views_strength", "adapt_pl", "ci_align")
                    if c in row
                )
                + f" ({row['used']}, r {row['ridge']:g}, w {row['local_weight']:g}, probe mix {row['probe_mix']}"
                + f" r {row['probe_ridge']}, {row['wins']}/{row['losses']})",
                file=sys.stderr,
                flush=True,
            )
    return rows


def table(results):
    cols = ["ci", "probe", "adapt", "adapt_views_strength"] + (
        ["adapt_pl", "ci_align"] if any("adapt_pl" in r for res in results.values() for r in res) else []
    )
    lines = [
        "| bundle | backbone | k | CI alone | probe on k local | adapt | adapt at deploy-check's strength | "
        + ("adapt + pseudo-labels | CI + mean alignment | " if "adapt_pl" in cols else "")
        + "kept (draws) |",
        "|---" * (4 + len(cols)) + "|",
    ]
    for (name, var), rows in results.items():
        for k in sorted({r["k"] for r in rows}):
            rs = [r for r in rows if r["k"] == k]
            cell = [f"{100 * np.mean([r[c] for r in rs]):.1f} ± {100 * np.std([r[c] for r in rs]):.1f}" for c in cols]
            kept = ", ".join(f"{u} {sum(r['used'] == u for r in rs)}" for u in ("views only", "adapted", "local probe"))
            moved = sum(r.get("strength_from") == "local images" for r in rs)
            kept += f"; strength moved {moved}" if any("strength_from" in r for r in rs) else ""
            lines.append(f"| {name} | {var} | {k} | " + " | ".join(cell) + f" | {kept} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--train", required=True, type=Path, help="ImageFolder the local images are drawn from")
    ap.add_argument("--test", required=True, type=Path)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5, 10])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--int8", action="store_true", help="also the int8 backbone")
    ap.add_argument("--unlabelled", type=int, default=0, help="also adapt with this many pseudo-labelled images")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--features", type=Path, help="folder caching each variant's features (<bundle>_<artifact sha>_<variant>.npz)"
    )
    a = ap.parse_args()
    results = {}
    for path in a.bundles:
        for int8 in (False, True) if a.int8 else (False,):
            results[(path.name, "int8" if int8 else "fp32")] = run_variant(
                path,
                int8,
                a.train,
                a.test,
                a.k,
                a.draws,
                a.unlabelled,
                None if a.features is None else a.features / f"{cache_name(path)}_{'int8' if int8 else 'fp32'}.npz",
            )
    print(table(results))
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "results": {f"{n}/{v}": r for (n, v), r in results.items()},
                    "peak_rss_mb": peak_rss_mb(),
                    "command": " ".join(sys.argv),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
