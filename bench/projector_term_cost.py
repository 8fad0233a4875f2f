"""What the projector-aware term's real batch costs: the golden classifier applied after the projector
(the form before) vs folded into it (edgedd.distillation.projector_aware.inherited_ce), side by side.

Equation (1)'s logits for n real images: before, (z P^T + p) W^T + b, an n x D_B x D_A product per
ridge strength; now z (W P)^T + (W p + b), n x D_B x C. The two are the same function (tests hold
loss and gradients equal); this times one forward + backward of each on random tensors of a Lite's
shapes (100 synthetic rows, D_A = D_B = 1,280, C = 10, two strengths), alternating ABAB, and prints
the median seconds and the ratio for each real batch size.

    python bench/projector_term_cost.py [--real 1000 4000 10000] [--repeats 5] [--threads 1] [--json]
"""

from __future__ import annotations

import json


def main() -> None:
    import torch
    import torch.nn.functional as F
    from _term_timing import alternate_medians, report, term_parser

    from edgedd.distillation.projector_aware import inherited_ce, ridge_fit

    ap = term_parser(__doc__, repeats=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ridges = (0.1, 1.0)

    def before(x, y, z, labels, w, b):  # the unfolded form, as the term computed it until this change
        x, y, z, w, b = x.double(), y.double(), z.double(), w.double(), b.double()
        out = []
        for r in ridges:
            p, pb = ridge_fit(x, y, r)
            out.append(F.cross_entropy((z @ p.T + pb) @ w.T + b, labels))
        return torch.stack(out).mean().float()

    def now(x, y, z, labels, w, b):
        return inherited_ce(x, y, z, labels, w, b, ridges)

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(a.classes, a.dim, generator=g) / a.dim**0.5, torch.zeros(a.classes)
    rows = []
    for n in a.real:
        z, labels = torch.randn(n, a.dim, generator=g), torch.randint(0, a.classes, (n,), generator=g)
        med = alternate_medians(
            {"before": before, "now": now},
            lambda z=z, labels=labels: (
                torch.randn(a.syn, a.dim, generator=g, requires_grad=True),
                torch.randn(a.syn, a.dim, generator=g, requires_grad=True),
                z,
                labels,
                w,
                b,
            ),
            a.repeats,
        )
        rows.append({"real": n, "before_s": med["before"], "now_s": med["now"], "ratio": med["before"] / med["now"]})
    out = report(a, torch.__version__, rows)
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"| real images | before (s, median of {a.repeats}) | now (s) | before / now |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['real']:,} | {r['before_s']:.3f} | {r['now_s']:.3f} | {r['ratio']:.1f}x |")


if __name__ == "__main__":
    main()
