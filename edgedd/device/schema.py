"""The bundle schema: what a verified artifact must hold before any command uses it.

The hash proves the artifact is what a packer wrote, not that the packer wrote something sane: a
crafted (or buggy) packer can sign anything. So after the hash every command (deploy-check,
predict, inspect) runs :func:`problem` once, and a bundle that fails is refused with one line
instead of crashing somewhere later. It checks what the device code relies on: types, that the
tensors' shapes agree with each other and with the metadata (C classes, N images, K views, D_A,
D_B, T self-test inputs at the edge input size), value ranges, and that every float is finite.
Keys it does not know are left alone (they are covered by the hash; minor versions add keys).
See docs/ARTIFACT.md.
"""

from __future__ import annotations

import math
import re

import numpy as np

from edgedd.core.images import INTERPOLATIONS
from edgedd.core.paths import MAX_CLASS_NAME_CHARS

from .ridge import PRIORS, RECORDED_RIDGE_RANGE, recorded_prior

# A graph's file name, from the artifact's metadata: a bare name inside the bundle, nothing else
# (no '/', '\\', '..', absolute path, NUL or empty name), so the metadata cannot point outside.
GRAPH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_SIDE = 2048  # edge input / resize size: beyond any real backbone, and bounds the memory of one image
SHA256 = re.compile(r"[0-9a-f]{64}")
# A class name is printed by predict, inspect and deploy-check: the ImageFolder scan's cap, longer
# than any folder name a file system allows (255 bytes), so no packed dataset reaches it.
MAX_CLASS_NAME = MAX_CLASS_NAME_CHARS
GRAPH_ROLES = ("backbone", "projector", "classifier")  # required
OPTIONAL_ROLES = ("backbone_int8", "backbone_static", "backbone_int8_static")
STATIC_BATCH_MAX = 4096
# the other runtimes' sections: role -> graph file, each with its sha256 (format 1.4)
RUNTIME_SECTIONS = ("ort", "litert")
# deploy-check's figures from the host, by key name: image counts (..._images, ..._count) and top-1
# fractions (any other key with "top1" in it: synthetic_top1_ridge, golden_heldout_top1, ...); any may be null
FRACTION_WORD, COUNT_SUFFIXES = "top1", ("_images", "_count")


class Invalid(ValueError):
    pass


def problem(meta: dict, tensors: dict[str, np.ndarray]) -> str | None:
    """Why this metadata and these tensors are not a usable bundle, or None if they are."""
    try:
        _check(meta, tensors)
    except Invalid as e:
        return str(e)
    return None


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise Invalid(what)


def _is_int(x) -> bool:
    return type(x) is int  # JSON true/false parse as bool, an int subclass: not a size


def _is_number(x) -> bool:
    # JSON ints are unbounded: one past int64 is no figure (and 10**400 would overflow math.isfinite)
    return (type(x) is float and math.isfinite(x)) or (type(x) is int and -(2**63) <= x < 2**63)


def _dict(parent: dict, key: str, where: str) -> dict:
    v = parent.get(key)
    _need(isinstance(v, dict), f"{where}{key} is not an object")
    return v


def _size(d: dict, key: str, where: str, lo: int = 1, hi: int | None = None) -> int:
    v = d.get(key)
    _need(
        _is_int(v) and v >= lo and (hi is None or v <= hi),
        f"{where}{key} is {_show(v)}, not an integer in [{lo}, {hi or 'inf'}]",
    )
    return v


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _tensor(tensors: dict, name: str, dtype, shape: tuple) -> np.ndarray:
    """The tensor ``name`` with this dtype and shape (None in ``shape``: any size, at least 1)."""
    t = tensors.get(name)
    _need(t is not None, f"tensor {name} is missing")
    _need(t.dtype == np.dtype(dtype), f"tensor {name} is {t.dtype}, not {np.dtype(dtype)}")
    _need(
        t.ndim == len(shape) and all(w is None and s >= 1 or s == w for s, w in zip(t.shape, shape, strict=True)),
        f"tensor {name} has shape {t.shape}, not {tuple('?' if w is None else w for w in shape)}",
    )
    if t.dtype.kind == "f":
        _need(bool(np.isfinite(t).all()), f"tensor {name} holds NaN or infinite values")
    return t


def _check(meta: dict, tensors: dict) -> None:
    names = meta.get("class_names")
    _need(
        isinstance(names, list) and len(names) >= 1 and all(isinstance(c, str) and c for c in names),
        "class_names is not a list of non-empty strings",
    )
    longest = max(len(n) for n in names)
    _need(longest <= MAX_CLASS_NAME, f"a class name is {longest} characters long, more than {MAX_CLASS_NAME}")
    _need(len(set(names)) == len(names), "class_names has duplicates")
    c = len(names)
    for part in ("distill", "edge"):
        _need(
            isinstance(_dict(_dict(meta, part, ""), "backbone", f"{part}.").get("name"), str),
            f"{part}.backbone.name is not a string",
        )
    edge = meta["edge"]
    pp = _preprocess(_dict(edge, "preprocess", "edge."))
    d_b = _size(edge, "features", "edge.")
    _graphs(_dict(meta, "onnx", ""))
    for section in RUNTIME_SECTIONS:
        if meta.get(section) is not None:
            _runtime_section(_dict(meta, section, ""), section)
    for d in (meta, meta.get("reference", {})):
        _need(isinstance(d, dict), "reference is not an object")
        _host_figures(d)

    w_c = _tensor(tensors, "classifier.weight", np.float32, (c, None))
    d_a = w_c.shape[1]
    _tensor(tensors, "classifier.bias", np.float32, (c,))
    _tensor(tensors, "projector.weight", np.float32, (d_a, d_b))
    _tensor(tensors, "projector.bias", np.float32, (d_a,))
    prior = recorded_prior(meta)
    _need(prior in PRIORS, f"reference.projector_prior is {_show(prior)}, not one of {', '.join(PRIORS)}")
    _need(
        prior != "identity" or d_a == d_b,
        f"reference.projector_prior is identity but D_A = {d_a} and D_B = {d_b} differ",
    )
    ridge, (lo, hi) = meta.get("reference", {}).get("device_ridge"), RECORDED_RIDGE_RANGE
    _need(
        ridge is None or (_is_number(ridge) and lo <= ridge <= hi),
        f"reference.device_ridge is {_show(ridge)}, not a strength in [{lo:g}, {hi:g}] or null",
    )
    images = _tensor(tensors, "synthetic.images", np.uint8, (None, 3, None, None))
    n, r = images.shape[0], images.shape[2]
    _need(
        images.shape[3] == r and r <= MAX_SIDE,
        f"synthetic.images are {images.shape[2]}x{images.shape[3]}, not square up to {MAX_SIDE}",
    )
    labels = _tensor(tensors, "synthetic.labels", np.int64, (n,))
    _need(bool(((labels >= 0) & (labels < c)).all()), f"synthetic.labels are not all class indices in [0, {c})")
    k = _tensor(tensors, "targets.features", np.float32, (n, None, d_a)).shape[1]
    boxes = _tensor(tensors, "targets.boxes", np.float32, (n, k, 4))
    # Boxes lie in [0, 1] of the image; the reference sampler's overhang past an edge stays within [-1, 2].
    _need(
        bool(
            ((boxes >= -1) & (boxes <= 2)).all()
            and (boxes[..., 2] > boxes[..., 0]).all()
            and (boxes[..., 3] > boxes[..., 1]).all()
        ),
        "targets.boxes are not boxes (x0 < x1, y0 < y1, within [-1, 2])",
    )
    flips = _tensor(tensors, "targets.flips", np.uint8, (n, k))
    _need(bool((flips <= 1).all()), "targets.flips are not all 0 or 1")
    if meta.get("copy_ratio") is not None:
        _copy_ratio(_dict(meta, "copy_ratio", ""), n)
    s = pp["input_size"]
    t = _tensor(tensors, "selftest.inputs", np.float32, (None, 3, s, s)).shape[0]
    _tensor(tensors, "selftest.features", np.float32, (t, d_b))
    _tensor(tensors, "selftest.logits", np.float32, (t, c))


def _preprocess(pp: dict) -> dict:
    where = "edge.preprocess."
    s = _size(pp, "input_size", where, 1, MAX_SIDE)
    _size(pp, "resize_size", where, s, MAX_SIDE)  # the canvas is centre-cropped to input_size
    _need(
        pp.get("interpolation") in INTERPOLATIONS,
        f"{where}interpolation is {_show(pp.get('interpolation'))}, not one of {', '.join(INTERPOLATIONS)}",
    )
    for key, lo in (("mean", -math.inf), ("std", 0.0)):
        v = pp.get(key)
        _need(
            isinstance(v, list) and len(v) == 3 and all(_is_number(x) and x > lo for x in v),
            f"{where}{key} is {_show(v)}, not 3 finite numbers" + (" > 0" if lo == 0 else ""),
        )
    return pp


def _graphs(onnx: dict, where: str = "onnx", roles: tuple = GRAPH_ROLES) -> None:
    for role in roles + OPTIONAL_ROLES:
        g = onnx.get(role)
        if g is None and role not in roles:
            continue
        _file_entry(g, f"{where}.{role}", role)
        if role.endswith("_static"):
            _size(g, "batch", f"{where}.{role}.", 1, STATIC_BATCH_MAX)


def _file_entry(g, where: str, role: str) -> None:
    _need(isinstance(g, dict), f"{where} is not an object")
    # one message whatever the name, so a crafted artifact learns nothing about what exists outside
    _need(
        isinstance(g.get("file"), str) and GRAPH_NAME.fullmatch(g["file"]) is not None,
        f"it names its {role} graph by something other than a file name inside the bundle",
    )
    _need(
        isinstance(g.get("sha256"), str) and SHA256.fullmatch(g["sha256"]) is not None,
        f"{where}.sha256 is not a sha256",
    )


def _runtime_section(sec: dict, name: str) -> None:
    """ort / litert: graphs by role (the three required roles, the optional ones) and, for ort, the operator config."""
    _graphs(_dict(sec, "graphs", f"{name}."), f"{name}.graphs", GRAPH_ROLES)
    if name == "ort":
        _file_entry(sec.get("required_operators"), "ort.required_operators", "required-operators config")


def _host_figures(d: dict) -> None:
    """Host figures deploy-check compares against: top-1 fractions in [0, 1], image counts >= 1; null allowed."""
    for key, v in d.items():
        if v is None:
            continue
        if key.endswith(COUNT_SUFFIXES):
            _need(_is_int(v) and v >= 1, f"{key} is {_show(v)}, not a positive integer or null")
        elif FRACTION_WORD in key:
            _need(_is_number(v) and 0 <= v <= 1, f"{key} is {_show(v)}, not a fraction in [0, 1] or null")


def copy_ratio_problem(cr, n: int) -> str | None:
    """Why ``cr`` is not a valid artifact ``copy_ratio`` for N images, or None (pack checks what it copies from
    summary.json).
    """
    try:
        _copy_ratio(cr if isinstance(cr, dict) else _dict({"copy_ratio": cr}, "copy_ratio", ""), n)
    except Invalid as e:
        return str(e)
    return None


def _copy_ratio(cr: dict, n: int) -> None:
    """Format 1.5's optional ``copy_ratio`` (edgedd.core.copyratio): per space the figures of the N shipped
    images; ratios and distances finite and >= 0, counts within [0, N]; nulls where undefined."""
    spaces = _dict(cr, "spaces", "copy_ratio.")
    for space in ("pixels", "features"):
        if spaces.get(space) is None:
            continue
        e, where = _dict(spaces, space, "copy_ratio.spaces."), f"copy_ratio.spaces.{space}."
        _need(
            e.get("images") == n and _is_int(e.get("images")),
            f"{where}images is {_show(e.get('images'))}, not the {n} synthetic images",
        )
        for key in ("median_real_nearest", "min", "median", "max"):
            v = e.get(key)
            _need(
                v is None or (_is_number(v) and v >= 0), f"{where}{key} is {_show(v)}, not a finite number >= 0 or null"
            )
        below, share = e.get("below"), e.get("share_below")
        _need(
            below is None or (_is_int(below) and 0 <= below <= n),
            f"{where}below is {_show(below)}, not a count in [0, {n}] or null",
        )
        _need(
            share is None or (_is_number(share) and 0 <= share <= 1),
            f"{where}share_below is {_show(share)}, not a fraction in [0, 1] or null",
        )
