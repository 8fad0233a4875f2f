"""Sections of the ``edgedd report`` page beside :mod:`edgedd.evaluation.report`'s: the synthetic images one
row per class (the class name at the head of its row), and what the set holds (the copy ratio,
:mod:`edgedd.core.copyratio`). Standard library only; every text is HTML-escaped (class names are user
data)."""

from __future__ import annotations

import html

from edgedd.core.copyratio import NEAR_COPY, headline

CSS = (
    "\n"
    ".classes{display:flex;flex-direction:column;gap:6px} .classrow{display:flex;align-items:center;"
    "gap:8px}\n"
    ".classrow .cname{min-width:7em;max-width:10em;font-weight:600;overflow-wrap:anywhere;"
    "text-align:right}\n"
    ".classrow .tiles{display:flex;flex-wrap:wrap;gap:4px;flex:1;min-width:0}\n"
    ".classrow img{image-rendering:pixelated;display:block;border:1px solid #ccc;flex:1 1 0;"
    "min-width:32px;max-width:96px;height:auto}\n"
    ".warn{color:#8a4b00;font-weight:600}\n"
)


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def synthetic_rows(uris: list[str], labels: list[int], names: list[str]) -> str:
    """The images as one row per class, in class order, the class name first: a class's images are
    read side by side (how alike they are) and the classes down the page; tiles shrink (down to 32
    CSS pixels) to keep a class on one line, then wrap. ``uris``: one PNG data URI per image."""
    by_class: dict[int, list[str]] = {}
    for uri, y in zip(uris, labels, strict=False):
        by_class.setdefault(int(y), []).append(uri)
    rows = []
    for c in sorted(by_class):
        name = esc(names[c])
        tiles = "".join(f'<img class="tile" src="{u}" alt="{name}" title="{name}">' for u in by_class[c])
        rows.append(f'<div class="classrow"><div class="cname">{name}</div><div class="tiles">{tiles}</div></div>')
    return '<div class="grid classes" id="synthetic">\n' + "\n".join(rows) + "\n</div>"


def _fmt(v, spec: str = ".2f") -> str:
    return "–" if not isinstance(v, (int, float)) or isinstance(v, bool) else format(v, spec)


def copy_ratio_section(summary: dict) -> str:
    """What the set holds: per space the ratio's min / median / max and the near-copies, for the
    result and (when recorded) the starting set; a note for runs made before the figure existed."""
    cr = summary.get("copy_ratio")
    if not isinstance(cr, dict):
        return (
            '<h3>What the synthetic set holds</h3>\n<p class="note">copy ratio not recorded '
            "(the run was made before edgedd measured it).</p>"
        )
    rows = []
    for label, c in (("result", cr), ("starting set (step 0)", summary.get("copy_ratio_start"))):
        spaces = c.get("spaces") if isinstance(c, dict) else None
        for space, e in (spaces or {}).items():
            if not isinstance(e, dict):
                continue
            below = f"{e.get('below')}/{e.get('images')}" if e.get("below") is not None else "–"
            rows.append(
                "<tr>"
                + "".join(f"<td>{esc(v)}</td>" for v in (label, space))
                + "".join(
                    f'<td class="num">{esc(v)}</td>'
                    for v in (
                        _fmt(e.get("min")),
                        _fmt(e.get("median")),
                        _fmt(e.get("max")),
                        below,
                        _fmt(e.get("median_real_nearest"), ".3g"),
                    )
                )
                + "</tr>"
            )
    line = headline(cr)
    cls = "warn" if "near-copies" in line and "no near-copies" not in line else "note"
    head = "".join(
        f"<th>{esc(h)}</th>"
        for h in ("set", "space", "min", "median", "max", f"ratio < {NEAR_COPY:g}", "real-to-nearest-real (median)")
    )
    return (
        "<h3>What the synthetic set holds</h3>\n"
        f'<p class="{cls}">{esc(line)}</p>\n'
        '<p class="note">copy ratio: distance to the nearest real training image / the median distance of a real image '
        "to "
        "its nearest other one (pixels: 32x32 RGB, RMS; features: phi_A of the centre crop).</p>\n"
        f'<table id="copy-ratio"><thead><tr>{head}</tr></thead><tbody>' + "\n".join(rows) + "</tbody></table>"
    )


def starting_set_rows(r: dict) -> list[tuple[str, dict]]:
    """The evaluation's starting-set entries, named as the table's rows."""
    return [(f"starting set, step 0 ({m})", v) for m, v in (r.get("starting_set") or {}).items() if isinstance(v, dict)]


def gain_line(r: dict) -> str:
    """ "stage-II gain (final - starting set, top-1): normal +2.60 points", or ""."""
    g = r.get("stage2_gain")
    if not isinstance(g, dict) or not g:
        return ""
    return (
        "<p>stage-II gain (final − starting set, top-1): "
        + esc(", ".join(f"{m} {_fmt(100 * v, '+.2f')} points" for m, v in g.items() if isinstance(v, (int, float))))
        + "</p>"
    )
