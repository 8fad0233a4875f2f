"""How far an sfm_sub run got towards its own per-image targets, and what the targets would be worth.

For one run (``--method sfm_sub`` or ``sfm_sub_probe``, the same targets), in phi_A of the centre crop
(the space the sub-centre targets live in), it prints:

* the mean squared distance of each image to its own sub-centre (the pairing the loss uses), in
  units of d2 (the mean squared distance between real class centres, the loss's own unit), for the
  step-0 images (``initial.safetensors``) and the result;
* a logistic probe (L-BFGS, relative L2 1e-3, the evaluation's converged fit) trained on the 100
  centre features alone (no views) and scored on the test images' centre features, for the step-0
  images, the result, and the targets themselves (the set the term would reach at its optimum);
* the same probe on the targets plus each of two parts of the result's residual r_i = z_i - s_i: the
  part along the start's residual r0_i (what is left of the real image's own difference from its
  target) and the rest (directions Stage II added).

It answers whether the stage-II gain is limited by the targets (the targets probe no better than
the result) or by the optimisation (they probe better, and the images stop short of them). The
probe on centre features alone is not the evaluation's protocol (which fits on 64 flip + crop
views per image); its figures compare these sets with each other only, and a change that lifts
it need not lift the evaluation (the whitened per-image term raised it and lowered the
evaluation's probe: docs/RESULTS.md, "Where Stage II starts").

    python bench/target_room.py RUN --test embedded:mnist/test
"""

from __future__ import annotations

import argparse
import json

import torch

from edgedd.core.config import SUBCENTRE_METHODS
from edgedd.core.images import open_dataset
from edgedd.distillation.losses import centre_separation
from edgedd.distillation.rundir import load_initial, load_run
from edgedd.distillation.subcentres import subcentre_targets
from edgedd.distillation.trainingset import centre_features, training_features
from edgedd.host.heads import ce_loss, fit_lbfgs


def _probe(z: torch.Tensor, y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor, classes: int) -> float:
    head = torch.nn.Linear(z.shape[1], classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    fit_lbfgs(head, (z.detach()[:, None, :],), ce_loss(y), 1e-3, 500)
    with torch.no_grad():
        return 100 * float((head(test).argmax(1) == test_y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--test", required=True, help="the labelled test images (a data spec, e.g. embedded:mnist/test)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run = load_run(a.run)
    if run.config.get("method") not in SUBCENTRE_METHODS or run.config.get("init") not in ("coreset", "noise"):
        raise SystemExit(
            "error: a run of --method sfm_sub or sfm_sub_probe from --init coreset or noise (image i takes target i)"
        )
    if run.centres is None:
        raise SystemExit("error: the run has no stats.safetensors (Stage I's class centres, the loss's d2)")
    initial = load_initial(run)
    if initial is None:
        raise SystemExit("error: the run has no initial.safetensors (its step-0 images); re-run distill")
    d2 = float(centre_separation(run.centres.double()))  # the loss's own unit (stage2 passes these centres)
    cpu = torch.device("cpu")
    model, info = run.load_backbone(cpu)
    c, ipc = run.num_classes, run.ipc
    train = training_features(model, info, run.train_data(), cpu, amp=False)
    test = training_features(model, info, open_dataset(a.test), cpu, amp=False)
    sub = subcentre_targets(train.feats, train.labels, None, c, ipc, int(run.config["seed"])).double()

    def in_d2(r: torch.Tensor) -> float:  # mean squared norm of the (N, D) residuals, in units of d2
        return float((r**2).sum(1).mean()) / d2

    start = centre_features(model, info, initial, amp=False).double()
    final = centre_features(model, info, run.images, amp=False).double()
    y = run.labels
    tz, ty = torch.from_numpy(test.feats).float(), torch.from_numpy(test.labels)
    r0, r = start - sub, final - sub
    u = r0 / r0.norm(dim=1, keepdim=True).clamp_min(1e-12)
    along = (r * u).sum(1, keepdim=True) * u  # the projection of r_i on r0_i's direction
    sets = {
        "start": start,
        "result": final,
        "targets": sub,
        "targets+along": sub + along,
        "targets+rest": sub + r - along,
    }
    out = {
        "run": a.run,
        "distance_to_targets_d2": {
            "start": in_d2(r0),  # image i to target i, class-major as the loss pairs them
            "result": in_d2(r),
            "result_along_start": in_d2(along),
            "result_rest": in_d2(r - along),
        },
        "centre_probe_top1": {name: _probe(z.float(), y, tz, ty, c) for name, z in sets.items()},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
