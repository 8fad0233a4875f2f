"""Where in frequency a run's Stage II change lies, beside the real images' own variation.

For each run directory it splits the energy of three sets of (N, 3, R, R) pixel arrays over radial
frequency bands (cycles per image side of the R-pixel canvas):

* ``added``: result - start, what Stage II changed (``synthetic.safetensors`` minus
  ``initial.safetensors``);
* ``real_within_class``: each start image minus its class's mean start image. From ``--init
  coreset`` or ``real`` the start images are real training images, so this is how real images of one
  class differ from each other (the variation a probe has to learn);

each as the share of the set's total power |FFT2|^2 (summed over images and channels) in each band,
and the RMS of each set in pixel units. It also gives the share of ``added`` energy off the grey axis
(the part that differs between the three channels; 0 for a change that keeps a grey image grey).

    python bench/change_spectrum.py RUN [RUN ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from edgedd.distillation.rundir import load_initial, load_run

BANDS = ((0, 4), (4, 8), (8, 14), (14, 22), (22, 33), (33, math.inf))


def band_shares(x: torch.Tensor) -> list[float]:
    """Share of sum |FFT2(x)|^2 per radial band (cycles per side) of the (N, C, R, R) array x."""
    power = torch.fft.fft2(x.double()).abs().pow(2).sum(dim=(0, 1))
    r = x.shape[-1]
    f = torch.fft.fftfreq(r, d=1.0 / r).double()  # integer frequencies, cycles per image side
    radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    total = float(power.sum())
    return [float(power[(radius >= lo) & (radius < hi)].sum()) / total for lo, hi in BANDS]


def spectrum(run_dir: str) -> dict:
    run = load_run(run_dir)
    start = load_initial(run)
    if start is None:
        raise SystemExit(f"error: {run_dir} has no initial.safetensors (its step-0 images); re-run distill")
    added = run.images - start
    means = torch.stack([start[run.labels == c].mean(0) for c in range(run.num_classes)])
    within = start - means[run.labels]
    off_grey = added - added.mean(dim=1, keepdim=True)
    return {
        "run": run_dir,
        "resolution": start.shape[-1],
        "bands_cycles_per_side": [f"{lo}-{'' if hi == math.inf else hi}" for lo, hi in BANDS],
        "added": band_shares(added),
        "real_within_class": band_shares(within),
        "rms": {"added": float(added.pow(2).mean().sqrt()), "real_within_class": float(within.pow(2).mean().sqrt())},
        "added_off_grey_share": float(off_grey.pow(2).sum() / added.pow(2).sum().clamp_min(1e-30)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = [spectrum(r) for r in a.runs]
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print("run | set | " + " | ".join(rows[0]["bands_cycles_per_side"]) + " | rms")
    for row in rows:
        for name in ("added", "real_within_class"):
            shares = " | ".join(f"{100 * s:.1f}%" for s in row[name])
            print(f"{row['run']} | {name} | {shares} | {row['rms'][name]:.4f}")
        print(f"{row['run']} | added off the grey axis: {100 * row['added_off_grey_share']:.1f}% of its energy")


if __name__ == "__main__":
    main()
