"""What the ridge-probe term (sfm_probe, sfm_sub_probe: edgedd.distillation.losses.ridge_probe_loss)
costs a Stage II step, with its real side rebuilt every step (the form before) and built once a run
(losses.probe_targets, held in stage2.RealTargets), side by side.

The real side is the real features' mean, floored sd, standardised copy with its ones column and
centred one-hot targets: constants of the run. Rebuilding them each step is O(n D) beside the
term's O(n D N) product with the synthetic features. This times one forward + backward of the term
on random tensors of a Lite's shapes (100 synthetic rows, D = 1,280, C = 10), alternating ABAB, and
prints the median seconds and the ratio for each real count (4,000 is embedded:mnist's training
split; 10,000 is the term's cap, subcentres.PROBE_MAX_REAL).

    python bench/probe_term_cost.py [--real 1000 4000 10000] [--repeats 7] [--threads 1] [--json]
"""

from __future__ import annotations

import json


def main() -> None:
    import torch
    from _term_timing import alternate_medians, report, term_parser

    from edgedd.distillation.losses import probe_targets, ridge_probe_loss

    ap = term_parser(__doc__, repeats=7)
    ap.add_argument("--ridge", type=float, default=0.1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    g = torch.Generator().manual_seed(0)
    rows = []
    for n in a.real:
        real = torch.randn(n, a.dim, generator=g)
        labels = torch.arange(a.classes).repeat(n // a.classes + 1)[:n]
        built = probe_targets(real, labels, a.classes)

        def per_step(z, real=real, labels=labels):  # the form before: the constants rebuilt each step
            return ridge_probe_loss(z, probe_targets(real, labels, a.classes), a.ridge)

        def hoisted(z, built=built):
            return ridge_probe_loss(z, built, a.ridge)

        med = alternate_medians(
            {"per_step": per_step, "hoisted": hoisted},
            lambda: (torch.randn(a.syn, a.dim, generator=g, requires_grad=True),),
            a.repeats,
        )
        rows.append(
            {
                "real": n,
                "per_step_s": med["per_step"],
                "hoisted_s": med["hoisted"],
                "ratio": med["per_step"] / med["hoisted"],
            }
        )
    out = report(a, torch.__version__, rows)
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"| real features | rebuilt each step (s, median of {a.repeats}) | built once (s) | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['real']:,} | {r['per_step_s']:.4f} | {r['hoisted_s']:.4f} | {r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
