"""``edgedd report``: one self-contained HTML page about a finished run.

The page holds the synthetic images (one row per class, its name first), the loss and
flow-cosine curves from ``RUN/metrics.jsonl`` (matplotlib, Agg, no display), the run's summary
and, when given, the accuracy table of an ``edgedd evaluate --json`` result, the deploy-check
report of an ``edgedd deploy-check --json`` result and what a bundle's artifact records. Every
image is a ``data:image/png;base64,...`` URI and the style sheet is inline: the file opens from
anywhere, without a server or a network. All text (class names included: they are user data) is
HTML-escaped.

Needs numpy, Pillow, safetensors and matplotlib; not torch.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from edgedd.core import atomic
from edgedd.core.errors import EdgeddError
from edgedd.distillation.metrics import METRICS_FILE, read_metrics_sampled

from .report_parts import CSS as PARTS_CSS
from .report_parts import copy_ratio_section, gain_line, starting_set_rows, synthetic_rows

REPORT_FILE = "report.html"
MIN_TILE = 96  # pixels: small synthetic images are upscaled (nearest) so they can be seen

CSS = (
    "\n"
    "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;"
    "max-width:1100px;color:#222;padding:0 1em}\n"
    "h1{font-size:1.5em} "
    "h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}\n"
    "table{border-collapse:collapse;margin:.5em 0} "
    "th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}\n"
    "td.num{text-align:right;font-variant-numeric:tabular-nums} tr.stalled td{background:#fff3f0}\n"
    ".grid{display:flex;flex-wrap:wrap;gap:8px} figure.tile{margin:0;text-align:center}\n"
    "figure.tile img{image-rendering:pixelated;display:block;border:1px solid #ccc}\n"
    f"figure.tile figcaption{{font-size:.8em;max-width:{MIN_TILE}px;overflow-wrap:anywhere}}\n"
    ".plots img{max-width:100%} .pass{color:#1a7f37;font-weight:600} "
    ".fail{color:#c62828;font-weight:600} .skip{color:#8a6d00;font-weight:600}\n"
    ".note{color:#666;font-size:.9em}\n"
)


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _pct(v) -> str:
    return "–" if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) else f"{100 * v:.1f}%"


def _num(v, fmt: str = ".4g") -> str:
    return "–" if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) else format(v, fmt)


# ----------------------------------------------------------------------------- inputs


def _read_json_object(path: Path, what: str) -> dict:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeddError(f"{what} {path} does not exist") from None
    except (
        OSError,
        ValueError,
        UnicodeDecodeError,
        RecursionError,
    ) as e:  # RecursionError: nesting past the parser's limit
        raise EdgeddError(f"{what} {path} is not readable JSON ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise EdgeddError(f"{what} {path} is not a JSON object")
    return obj


def _load_result(value, what: str, schema: str, required: tuple[str, ...], made_by: str) -> dict | None:
    """A --json result given as a dict or a file path; its schema (if it has one) and keys checked."""
    if value is None:
        return None
    obj = value if isinstance(value, dict) else _read_json_object(Path(value), what)
    name = "the given result" if isinstance(value, dict) else str(value)
    if obj.get("schema", schema) != schema or any(k not in obj for k in required):
        raise EdgeddError(f"{what} {name} is not an {schema} result", f"write one with {made_by} --json > FILE")
    return obj


def load_run(run: str | Path) -> tuple[dict, np.ndarray, np.ndarray, list[str]]:
    """A finished run's summary, images (N, 3, R, R) in [0, 1], labels and class names."""
    from edgedd.distillation import rundir  # the owner of the run directory's file names

    run = Path(run)
    if not run.is_dir():
        raise EdgeddError(f"run directory {run} does not exist")
    summary_file = run / rundir.SUMMARY
    if not summary_file.is_file():
        raise EdgeddError(
            f"{run} is not a finished edgedd run (no summary.json)",
            "finish it with edgedd distill ... --resume, or pass a finished run directory",
        )
    summary = _read_json_object(summary_file, "summary")
    try:
        from safetensors.numpy import load_file

        syn = load_file(str(run / rundir.SYNTHETIC))
        images, labels = syn["images"].astype(np.float32), syn["labels"].astype(np.int64)
        meta = json.loads((run / rundir.SYNTHETIC_JSON).read_text(encoding="utf-8"))
        names = [str(c) for c in meta["class_names"]]
    except Exception as e:  # missing, damaged or edited result files
        raise EdgeddError(
            f"{run} has no readable synthetic set ({type(e).__name__})", "rerun edgedd distill with --overwrite"
        ) from None
    if (
        images.ndim != 4
        or images.shape[1] != 3
        or labels.shape != (images.shape[0],)
        or (labels.size and labels.max() >= len(names))
    ):
        raise EdgeddError(
            f"{run}/synthetic.safetensors does not match synthetic.json", "rerun edgedd distill with --overwrite"
        )
    return summary, images, labels, names


def _metrics(path: Path) -> tuple[list[dict], int]:
    """metrics.jsonl sampled for the curves (bounded memory, edgedd.distillation.metrics.read_metrics_sampled) and
    its well-formed line count; the lines skipped are counted in one warning."""
    from edgedd.core.terminal import say

    rows, steps, skipped = read_metrics_sampled(path)
    if skipped:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        say(f"warning: {path}: skipped {sum(skipped.values())} line(s) the curves cannot use ({why})")
    return rows, steps


# ----------------------------------------------------------------------------- pieces of the page


def tile_pngs(images: np.ndarray) -> list[bytes]:
    from PIL import Image

    n, _, h, w = images.shape
    scale = max(1, -(-MIN_TILE // max(h, w, 1)))
    tiles = (np.clip(np.nan_to_num(images), 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    return [_png(Image.fromarray(t.repeat(scale, axis=0).repeat(scale, axis=1))) for t in tiles]


def _figure_png(draw) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig.add_subplot())
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def loss_plot(rows: list[dict]) -> bytes | None:
    pts = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    if not pts:
        return None
    res = [(r["step"], r["resolution"]) for r in rows if isinstance(r.get("resolution"), int)]

    def draw(ax):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, color="tab:blue", label="loss")
        if all(p[1] > 0 for p in pts):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("matching loss", color="tab:blue")
        ax.set_title("Stage II loss")
        if res:
            ax2 = ax.twinx()
            ax2.step([p[0] for p in res], [p[1] for p in res], where="post", color="tab:gray", lw=1, alpha=0.7)
            ax2.set_ylabel("top-level resolution (px)", color="tab:gray")

    return _figure_png(draw)


def flow_plot(rows: list[dict]) -> bytes | None:
    pts = [
        (r["step"], r["flow_cosine"])
        for r in rows
        if isinstance(r.get("flow_cosine"), (int, float)) and math.isfinite(r["flow_cosine"])
    ]
    if not pts:
        return None

    def draw(ax):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, lw=1, color="tab:green")
        ax.set_xlabel("step")
        ax.set_ylabel("cos(F_syn, F_real)")
        ax.set_title("flow cosine (centre crops)")
        ax.grid(alpha=0.3)

    return _figure_png(draw)


def _table(head: list[str], rows: list[tuple[list[str], str]], numeric: set[int] = frozenset()) -> str:
    """``rows``: (already escaped cells, tr class)."""
    out = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for cells, cls in rows:
        tds = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(cells))
        out.append(f'<tr class="{esc(cls)}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    return "\n".join(out) + "</tbody></table>"


def summary_section(s: dict) -> str:
    bb, d, g = s.get("backbone") or {}, s.get("dataset") or {}, s.get("golden") or {}
    rows = [
        ("method", s.get("method")),
        ("backbone", f"{bb.get('name')} (weights {bb.get('weights')})"),
        (
            "dataset",
            f"{d.get('name')}: {d.get('classes')} classes, {d.get('images_used')} images"
            + (f", {d.get('skipped_images')} skipped" if d.get("skipped_images") else ""),
        ),
        ("images per class (IPC)", s.get("ipc")),
        ("synthetic images", s.get("synthetic_images")),
        (
            "steps",
            s.get("iterations")
            if not s.get("resumed_from_step")
            else f"{s.get('iterations')} (resumed from {s.get('resumed_from_step')})",
        ),
        ("final loss", _num(s.get("final_loss"))),
        ("flow cosine", _num(s.get("flow_cosine"), ".3f")),
        (
            "golden classifier",
            f"{g.get('recipe')} recipe; held-out top-1 {_pct(g.get('heldout_top1'))}, "
            f"train top-1 {_pct(g.get('train_top1_centre_crop', s.get('golden_train_top1')))}"
            + (" — STALLED: did not train" if g.get("stalled") else ""),
        ),
        (
            "time",
            f"Stage I {_num(s.get('stage1_seconds'), '.1f')} s{' (cached)' if s.get('stage1_cached') else ''}, "
            f"Stage II {_num(s.get('stage2_seconds'), '.1f')} s on {s.get('device')}",
        ),
        ("edgedd", s.get("edgedd")),
    ]
    return "<h2>Run</h2>\n" + _table(["", ""], [([esc(k), esc(v)], "") for k, v in rows])


def landing_section(ld: dict | None) -> str:
    if not isinstance(ld, dict):
        return ""
    rows = [
        ("centre offset (inter-centre distances)", _num(ld.get("centre_offset_mean"), ".2f")),
        ("feature norm ratio (synthetic / centres)", _num(ld.get("norm_ratio"), ".2f")),
        ("golden top-1, centre view", _pct(ld.get("golden_top1_centre_view"))),
        (
            f"golden top-1, {ld.get('augmented_views', '?')} augmented views",
            _pct(ld.get("golden_top1_augmented_views")),
        ),
    ]
    return "<h3>Where the synthetic features land</h3>\n" + _table(
        ["", ""], [([esc(k), esc(v)], "") for k, v in rows], {1}
    )


def eval_section(r: dict) -> str:
    head = ["set", "top-1 (mean ± std)", "top-5", "seeds", "training loss (start → final)", ""]
    rows = []
    entries = [(f"{r.get('method')} ({m})", v) for m, v in r["modes"].items()]
    entries += starting_set_rows(r)
    entries += [(f"baseline: {b}", v) for b, v in (r.get("baselines") or {}).items()]
    for name, v in entries:
        seeds = v.get("seeds") or []
        loss = ""
        if v.get("train_loss_final"):
            mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
            loss = f"{_num(mean(v.get('train_loss_start') or [math.nan]))} → {_num(mean(v['train_loss_final']))}"
        stalled = bool(v.get("stalled"))
        cells = [
            esc(name),
            esc(
                f"{_num(100 * v.get('top1_mean', math.nan), '.2f')} ± {_num(100 * v.get('top1_std', math.nan), '.2f')}"
            ),
            esc(_num(100 * v.get("top5_mean", math.nan), ".2f")),
            esc(len(seeds)),
            esc(loss),
            '<span class="fail">STALLED: did not train</span>' if stalled else "",
        ]
        rows.append((cells, "stalled" if stalled else ""))
    intro = (
        f"{r.get('method')} on {r.get('backbone')}, evaluated with {r.get('eval_backbone')}; IPC {r.get('ipc')}; "
        f"{r.get('test_images')} test images; {r.get('protocol', 'reference')} protocol. Top-1 and top-5 in %."
    )
    return (
        "<h2>Accuracy</h2>\n"
        + f"<p>{esc(intro)}</p>\n"
        + _table(head, rows, {1, 2, 3})
        + "\n"
        + gain_line(r)
        + "\n"
        + landing_section(r.get("landing"))
    )


def deploy_section(dc: dict) -> str:
    rows = []
    for c in dc.get("checks") or []:
        ok = c.get("ok")  # None: skipped (deploy-check could not judge it; the detail says why)
        word, cls = ("SKIP", "skip") if ok is None else ("PASS", "pass") if ok else ("FAIL", "fail")
        rows.append(([f'<span class="{cls}">{word}</span>', esc(c.get("name")), esc(c.get("detail"))], ""))
    verdict = "PASSED" if dc.get("ok") else "FAILED"
    line = (
        f"synthetic top-1 {_pct(dc.get('synthetic_top1'))}"
        + (
            f", data top-1 {_pct(dc.get('data_top1'))} (chance {_pct(dc.get('chance_top1'))})"
            if "data_top1" in dc
            else ""
        )
        + (
            f"; adapted to local images (edgedd adapt): data top-1 {_pct(dc['data_top1_before_adapt'])} before, "
            f"{_pct(dc.get('data_top1'))} after"
            if "data_top1_before_adapt" in dc
            else ""
        )
        + f"; batch-1 latency p50 {_num(dc.get('latency_ms_p50'), '.2f')} ms, p95 "
        f"{_num(dc.get('latency_ms_p95'), '.2f')} ms"
        + (f"; peak RSS {_num(dc.get('peak_rss_mb'), '.0f')} MB" if dc.get("peak_rss_mb") is not None else "")
        + f"; {'int8' if dc.get('int8') else 'fp32'} backbone on {', '.join(map(str, dc.get('providers') or []))}"
    )
    return (
        f'<h2>Deploy check: <span class="{"pass" if dc.get("ok") else "fail"}">{verdict}</span></h2>\n'
        + (f"<p>bundle {esc(dc['bundle'])}</p>\n" if dc.get("bundle") else "")
        + f"<p>{esc(line)}</p>\n"
        + _table(["", "check", "detail"], rows)
    )


def bundle_section(b: dict) -> str:
    edge, ref = b.get("edge") or {}, b.get("reference") or {}
    rows = [
        ("artifact", f"{b.get('file')} (format {b.get('format')}, sha256 {str(b.get('sha256'))[:16]}…)"),
        ("edge backbone", (edge.get("backbone") or {}).get("name")),
        ("graphs", ", ".join(sorted(b.get("onnx") or {}))),
        ("host: synthetic top-1, packed projector", _pct(ref.get("synthetic_top1"))),
        ("host: synthetic top-1, closed-form projector", _pct(ref.get("synthetic_top1_ridge"))),
    ]
    if "int8_synthetic_top1_packed_projector" in ref:
        rows.append(("host: synthetic top-1, int8 backbone", _pct(ref["int8_synthetic_top1_packed_projector"])))
    return "<h2>Bundle</h2>\n" + _table(["", ""], [([esc(k), esc(v)], "") for k, v in rows])


# ----------------------------------------------------------------------------- the page


def render_report(
    run: str | Path,
    eval: dict | str | Path | None = None,
    deploy_check: dict | str | Path | None = None,
    bundle: str | Path | None = None,
) -> tuple[str, dict]:
    """The page's HTML and what it holds (the ``edgedd.report/1`` keys but ``report``/``bytes``)."""
    run = Path(run)
    summary, images, labels, names = load_run(run)
    ev = _load_result(eval, "evaluation", "edgedd.evaluate/1", ("modes",), "edgedd evaluate")
    dc = _load_result(
        deploy_check, "deploy-check report", "edgedd.deploy-check/1", ("checks", "ok"), "edgedd deploy-check"
    )
    info = None
    if bundle is not None:
        from edgedd.device.predict import inspect

        info = inspect(bundle)
    rows, steps = _metrics(run / METRICS_FILE)

    title = (
        f"edgedd report: {summary.get('method')} on {(summary.get('backbone') or {}).get('name')}, IPC "
        f"{summary.get('ipc')}"
    )
    parts = [f"<h1>{esc(title)}</h1>", f'<p class="note">run {esc(run)}</p>']

    tiles = [png_data_uri(png) for png in tile_pngs(images)]
    parts.append(f"<h2>Synthetic images ({len(tiles)}, {len(names)} classes)</h2>")
    parts.append(synthetic_rows(tiles, labels.tolist(), names))
    parts.append(copy_ratio_section(summary))

    plots = []
    parts.append("<h2>Stage II</h2>")
    if not rows:
        parts.append(f'<p class="note">no {METRICS_FILE} in the run (made before edgedd recorded it): no curves.</p>')
    parts.append('<div class="plots">')
    for name, png in (("loss", loss_plot(rows)), ("flow_cosine", flow_plot(rows))):
        if png is not None:
            plots.append(name)
            parts.append(
                f'<img class="plot" id="plot-{name}" src="{png_data_uri(png)}" alt="{esc(name.replace("_", " "))} '
                'curve">'
            )
    parts.append("</div>")

    parts.append(summary_section(summary))
    if ev is None:
        parts.append(landing_section(summary.get("landing")))
    else:
        parts.append(eval_section(ev))
    if dc is not None:
        parts.append(deploy_section(dc))
    if info is not None:
        parts.append(bundle_section(info))

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}{PARTS_CSS}</style></head>\n<body>\n"
        + "\n".join(p for p in parts if p)
        + "\n</body></html>\n"
    )
    holds = {
        "run": str(run),
        "images": len(tiles),
        "classes": len(names),
        "plots": plots,
        "metrics_steps": steps,
        "evaluation": ev is not None,
        "deploy_check": dc is not None,
        "bundle": None if bundle is None else str(bundle),
    }
    return page, holds


def write_report(
    run: str | Path,
    eval: dict | str | Path | None = None,
    deploy_check: dict | str | Path | None = None,
    bundle: str | Path | None = None,
    out: str | Path | None = None,
) -> dict:
    """Write the page (default ``RUN/report.html``) atomically; returns the ``edgedd.report/1``
    object without ``schema``. ``eval`` / ``deploy_check``: an ``edgedd evaluate`` /
    ``edgedd deploy-check`` result as returned by the library or written by ``--json``, or the path
    of such a JSON file. ``bundle``: a bundle directory whose artifact's figures to show."""
    page, holds = render_report(run, eval=eval, deploy_check=deploy_check, bundle=bundle)
    path = Path(out) if out is not None else Path(run) / REPORT_FILE
    if path.is_dir():
        raise EdgeddError(f"--out {path} is a directory", "pass a file path, e.g. report.html")
    data = page.encode(
        "utf-8", errors="backslashreplace"
    )  # a non-UTF-8 class or file name (lone surrogates) shown escaped
    atomic.write_bytes(path, data)  # an OSError becomes one line naming the path (atomic.os_error)
    return {"report": str(path), "bytes": len(data), **holds}
