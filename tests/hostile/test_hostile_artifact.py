"""The artifact is a closed, verified world: every header byte is checked, the header and the file
size before any data is read, and a consistent (correctly hashed) artifact with malformed metadata
is refused in one line by deploy-check, predict and inspect alike."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from _crafted import one_line_error
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.errors import EdgeddError
from edgedd.core.stio import TensorSpec, header_bytes
from edgedd.device import artifact as art

# ----------------------------------------------------------------------------- the whole header


def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(head: str | bytes, rest: bytes, pad: bytes = b" ") -> bytes:
    head = head.encode() if isinstance(head, str) else head
    head += pad * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + rest


def _canonical(header: dict) -> str:
    return json.dumps(header, separators=(",", ":"))


def _first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def _reindented(data):
    h, rest = _split(data)
    return _join(json.dumps(h, indent=1), rest)


def _extra_md_key(data):  # before: a 1 MB key nobody hashes was "sha256 verified"
    h, rest = _split(data)
    h["__metadata__"] = dict(
        sorted({**h["__metadata__"], "edgedd.note": "x" * 1_000_000}.items())
    )  # canonical but for the key
    return _join(_canonical(h), rest)


def _extra_entry_key(data):
    h, rest = _split(data)
    h[_first_tensor(h)]["note"] = 1
    return _join(_canonical(h), rest)


def _entry_keys_reordered(data):
    h, rest = _split(data)
    name = _first_tensor(h)
    h[name] = dict(reversed(list(h[name].items())))
    return _join(_canonical(h), rest)


def _meta_reindented(data):  # the hash covers the *canonical* meta, so only canonical form can tell
    h, rest = _split(data)
    h["__metadata__"]["edgedd.meta"] = json.dumps(
        json.loads(h["__metadata__"]["edgedd.meta"]), indent=1, sort_keys=True
    )
    return _join(_canonical(h), rest)


def _meta_with_an_overflowing_float(data):  # 1e999 parses as inf, which canonical JSON refuses to write
    h, rest = _split(data)
    meta = h["__metadata__"]["edgedd.meta"]
    h["__metadata__"]["edgedd.meta"] = meta.replace('"reference":{', '"reference":{"aaa_overflow":1e999,', 1)
    return _join(_canonical(h), rest)


def _duplicate_entry(data):
    h, rest = _split(data)
    name = _first_tensor(h)
    text = _canonical(h)
    entry = f'"{name}":{_canonical(h[name])}'
    return _join(text.replace(entry, entry + "," + entry, 1), rest)


def _tab_padding(data):
    h, rest = _split(data)
    return _join(_canonical(h) + "\t", rest, b"\t")


def _unpadded(data):
    h, rest = _split(data)
    text = _canonical(h)
    if len(text) % 8 == 0:
        text += " "
    return _join(text, rest, b"")


def _nan_in_meta(data):
    h, rest = _split(data)
    md = h["__metadata__"]
    md["edgedd.meta"] = md["edgedd.meta"].replace('"synthetic_top1":', '"synthetic_top1":NaN,"was":', 1)
    return _join(_canonical(h), rest)


def _deep_header(data):  # before: RecursionError traceback
    h, rest = _split(data)
    return _join(_canonical(h)[:-1] + ',"deep":' + "[" * 5000 + "]" * 5000 + "}", rest)


def _deep_meta(data):
    h, rest = _split(data)
    md = h["__metadata__"]
    md["edgedd.meta"] = md["edgedd.meta"][:-1] + ',"deep":' + "[" * 5000 + "]" * 5000 + "}"
    return _join(_canonical(h), rest)


def _float_shape(data):
    h, rest = _split(data)
    name = _first_tensor(h)
    h[name]["shape"] = [float(s) for s in h[name]["shape"]]
    return _join(_canonical(h), rest)


def _offsets_gap(data):  # a hole between tensors, file grown to match: bytes nobody hashes
    h, rest = _split(data)
    names = sorted(k for k in h if k != "__metadata__")
    for name in names[1:]:
        h[name]["data_offsets"] = [o + 8 for o in h[name]["data_offsets"]]
    end0 = h[names[0]]["data_offsets"][1]
    return _join(_canonical(h), rest[:end0] + b"\0" * 8 + rest[end0:])


def _tail(data):
    return data + b"\0" * 64


HEADER_CASES = {
    "re-indented header": (_reindented, "canonical"),
    "extra __metadata__ key (1 MB)": (_extra_md_key, "header metadata keys other than"),
    "extra tensor entry key": (_extra_entry_key, "entry keys other than"),
    "tensor entry keys reordered": (_entry_keys_reordered, "canonical"),
    "meta re-indented": (_meta_reindented, "metadata is not in canonical form"),
    "meta with 1e999": (_meta_with_an_overflowing_float, "metadata is not in canonical form"),
    "duplicate tensor entry": (_duplicate_entry, "canonical"),
    "tab padding": (_tab_padding, "canonical"),
    "unpadded header": (_unpadded, "canonical"),
    "NaN in meta": (_nan_in_meta, "metadata is not JSON"),
    "header nested 5,000 deep": (_deep_header, "header is not JSON"),
    "meta nested 5,000 deep": (_deep_meta, "metadata is not JSON"),
    "shape of floats": (_float_shape, "malformed shape"),
    "gap between tensors": (_offsets_gap, "is not where"),
    "bytes after the last tensor": (_tail, "the tensors end at byte"),
}


@pytest.mark.parametrize("case", HEADER_CASES)
def test_every_header_byte_is_checked(bundle, case):
    craft, reason = HEADER_CASES[case]
    path = bundle / art.ARTIFACT_FILE
    data = path.read_bytes()
    bad = craft(data)
    assert bad != data
    with pytest.raises(EdgeddError, match=reason):
        art.load_bytes(bad)
    path.write_bytes(bad)
    one_line_error(CliRunner().invoke(app, ["inspect", str(bundle)]), "damaged or not an edgedd artifact")


# ----------------------------------------------------------------------------- bounded reading

LIMIT_MB = 512
LIMITED = r"""
import resource, sys
lim = int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
from edgedd.cli.host import main
sys.argv = ["edgedd", *sys.argv[2:]]
main()
"""


def _inspect_limited(path):
    env = dict(os.environ, MALLOC_ARENA_MAX="2")  # glibc reserves 64 MB of address space per thread arena otherwise
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(LIMIT_MB), "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _one_line(r, *words):
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr[
        -2000:
    ]
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_a_sparse_tail_is_refused_unread_under_an_address_space_limit(bundle):
    """Before: the whole file was read into memory first (3 GiB here: MemoryError under the limit)."""
    path = bundle / art.ARTIFACT_FILE
    base = _inspect_limited(path)
    if base.returncode != 0:
        pytest.skip(
            f"inspect does not fit in {LIMIT_MB} MB of address space on this machine at all: {base.stderr[-200:]}"
        )
    size = path.stat().st_size
    os.truncate(path, size + 3 * 2**30)  # sparse: no disk used
    _one_line(_inspect_limited(path), f"the tensors end at byte {size}, the file at byte {size + 3 * 2**30}")


def test_a_declared_huge_tensor_is_one_line_when_memory_runs_out(tmp_path):
    """A canonical header may declare 3 GiB of tensors (the file, sparse, as long): reading them needs that much memory,
    and a device without it says so in one line instead of a MemoryError traceback."""
    md = {
        "edgedd.format": art.FORMAT,
        "edgedd.meta": art.canonical_json({"format": art.FORMAT}),
        "edgedd.sha256": "0" * 64,
    }
    head = header_bytes(md, {"big": TensorSpec(np.dtype(np.uint8), (3 * 2**30,), 0, 3 * 2**30)})
    path = tmp_path / art.ARTIFACT_FILE
    path.write_bytes(head)
    os.truncate(path, len(head) + 3 * 2**30)
    _one_line(_inspect_limited(path), "more than this device can allocate")


def test_a_header_longer_than_the_bound_is_refused_unread(tmp_path):
    path = tmp_path / art.ARTIFACT_FILE
    path.write_bytes(struct.pack("<Q", art.MAX_HEADER + 8))
    os.truncate(path, art.MAX_HEADER + 64)
    one_line_error(CliRunner().invoke(app, ["inspect", str(path)]), "header length out of range")


def test_the_writer_refuses_what_readers_would_refuse(tmp_path):
    t = {"x": np.zeros(2, np.float32)}
    with pytest.raises(EdgeddError, match="NaN or infinite"):
        art.write(tmp_path / "a", t, {"figure": math.nan})
    with pytest.raises(EdgeddError, match="header would exceed"):
        art.write(tmp_path / "a", t, {"names": ["x" * 1000] * (art.MAX_HEADER // 1000)})
    assert not (tmp_path / "a").exists()


def test_read_tensors_are_the_hashed_bytes_and_read_only(packed):
    a = art.read(packed["bundle"] / art.ARTIFACT_FILE)
    assert all(not t.flags.writeable and t.flags.aligned for t in a.tensors.values())
    assert a.file_sha256 == packed["result"]["artifact_sha256"]


# ----------------------------------------------------------------------------- the schema, after the hash


def _drop_selftest(meta, t):
    for k in ("selftest.inputs", "selftest.features", "selftest.logits"):
        t.pop(k)


def _set(path: str, value):
    """An edit setting meta[a][b]... = value (path 'a.b'; a tensor when it names one)."""

    def edit(meta, t):
        if path in t:
            t[path] = value(t[path]) if callable(value) else value
            return
        *parents, key = path.split(".")
        d = meta
        for p in parents:
            d = d[p]
        d[key] = value(d[key]) if callable(value) else value

    return edit


def _nan_at(a):
    a = a.copy()
    a.reshape(-1)[0] = np.nan
    return a


SCHEMA_CASES = {  # case: (edit of (meta, tensors), words of the refusal)
    "graph entry a string": (_set("onnx.backbone", "backbone.onnx"), "onnx.backbone is not an object"),
    "graph sha256 not hex": (_set("onnx.projector.sha256", "Z" * 64), "onnx.projector.sha256"),
    "classifier graph missing": (lambda m, t: m["onnx"].pop("classifier"), "onnx.classifier"),
    "class_names an int": (_set("class_names", 3), "class_names"),
    "class_names too short": (_set("class_names", lambda c: c[:-1]), "classifier.weight"),
    "class_names duplicated": (_set("class_names", lambda c: [c[0]] * len(c)), "duplicates"),
    "class name not a string": (_set("class_names", lambda c: [1] + c[1:]), "class_names"),
    "mean of length 2": (_set("edge.preprocess.mean", [0.5, 0.5]), "mean"),
    "std zero": (_set("edge.preprocess.std", [0.5, 0.0, 0.5]), "std"),
    "resize_size 1e6": (_set("edge.preprocess.resize_size", 1e6), "resize_size"),
    "resize_size 1,000,000": (_set("edge.preprocess.resize_size", 1_000_000), "resize_size"),
    "resize_size below input_size": (_set("edge.preprocess.resize_size", 8), "resize_size"),
    "input_size unlike the self-test": (_set("edge.preprocess.input_size", 16), "selftest.inputs"),
    "input_size true": (_set("edge.preprocess.input_size", True), "input_size"),
    "unknown interpolation": (_set("edge.preprocess.interpolation", "cubic"), "interpolation"),
    "preprocess missing": (lambda m, t: m["edge"].pop("preprocess"), "edge.preprocess"),
    "edge backbone name missing": (lambda m, t: m["edge"]["backbone"].pop("name"), "edge.backbone.name"),
    "distill missing": (lambda m, t: m.pop("distill"), "distill"),
    "edge features unlike D_B": (_set("edge.features", 7), "projector.weight"),
    "NaN boxes": (_set("targets.boxes", _nan_at), "targets.boxes holds NaN"),
    "inverted boxes": (_set("targets.boxes", lambda b: b[..., [2, 3, 0, 1]].copy()), "targets.boxes"),
    "flips of 2": (_set("targets.flips", lambda f: f + 2), "targets.flips"),
    "label out of range": (_set("synthetic.labels", lambda y: y + 100), "synthetic.labels"),
    "wrong projector shape": (
        _set("projector.weight", lambda w: np.zeros((w.shape[0], w.shape[1] + 1), np.float32)),
        "projector.weight",
    ),
    "projector float64": (_set("projector.weight", lambda w: w.astype(np.float64)), "projector.weight is float64"),
    "classifier bias short": (_set("classifier.bias", lambda b: b[:-1].copy()), "classifier.bias"),
    "NaN classifier": (_set("classifier.weight", _nan_at), "classifier.weight holds NaN"),
    "Inf self-test features": (
        _set("selftest.features", lambda f: f + np.inf),
        "selftest.features holds NaN or infinite",
    ),
    "synthetic images float": (_set("synthetic.images", lambda x: x.astype(np.float32)), "synthetic.images is float32"),
    "synthetic images not square": (_set("synthetic.images", lambda x: x[..., :-1].copy()), "not square"),
    "missing self-test": (_drop_selftest, "tensor selftest.inputs is missing"),
    "targets without views": (_set("targets.features", lambda f: f[:, :0].copy()), "targets.features"),
    "reference top-1 a string": (_set("reference.synthetic_top1", "0.5"), "synthetic_top1"),
    "reference top-1 above 1": (_set("reference.synthetic_top1_ridge", 1.5), "synthetic_top1_ridge"),
    "golden held-out top-1 negative": (_set("reference.golden_heldout_top1", -0.1), "golden_heldout_top1"),
    "expected edge image count 0": (_set("reference.expected_edge_images", 0), "expected_edge_images"),
    "reference a list": (_set("reference", [1]), "reference"),
    "device strength negative": (_set("reference.device_ridge", -1.0), "reference.device_ridge"),
    "device strength a string": (_set("reference.device_ridge", "0.1"), "reference.device_ridge"),
    "device strength a bool": (_set("reference.device_ridge", True), "reference.device_ridge"),
    "device strength beyond any grid": (_set("reference.device_ridge", 1e9), "reference.device_ridge"),
    "device strength beyond any float": (_set("reference.device_ridge", 10**400), "reference.device_ridge"),
    "copy ratio a list": (_set("copy_ratio", [1]), "copy_ratio"),
    "copy ratio spaces a string": (_set("copy_ratio.spaces", "pixels"), "copy_ratio.spaces"),
    "copy ratio median negative": (_set("copy_ratio.spaces.pixels.median", -0.1), "copy_ratio.spaces.pixels.median"),
    "copy ratio median NaN-like string": (
        _set("copy_ratio.spaces.features.max", "nan"),
        "copy_ratio.spaces.features.max",
    ),
    "copy ratio more near-copies than images": (
        _set("copy_ratio.spaces.pixels.below", 10**6),
        "copy_ratio.spaces.pixels.below",
    ),
    "copy ratio of another set": (_set("copy_ratio.spaces.pixels.images", 999), "copy_ratio.spaces.pixels.images"),
}


@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_a_consistent_bundle_with_malformed_metadata_is_refused_alike(bundle, packed, case):
    """Re-signed through the artifact writer (valid hash): before, ~20 of these crashed somewhere, some only in
    predict/inspect.
    """
    edit, words = SCHEMA_CASES[case]
    path = bundle / art.ARTIFACT_FILE
    a = art.load(path)
    meta, tensors = dict(a.meta), dict(a.tensors)
    meta = json.loads(json.dumps(meta))  # a deep copy the edit may change
    edit(meta, tensors)
    art.write(path, tensors, meta)
    image = str(next((packed["heldout"] / "circle").iterdir()))
    lines = {
        one_line_error(CliRunner().invoke(app, argv), "verifies but does not hold a valid bundle", words)
        for argv in (["deploy-check", str(bundle)], ["predict", str(bundle), image], ["inspect", str(bundle)])
    }
    assert len({line.replace(str(path), "P") for line in lines}) == 1, lines  # the same refusal in every command


def test_the_copy_ratio_is_optional_and_printed(bundle):
    """Format 1.4's copy_ratio: an artifact without it (older packers) still loads; with it, inspect
    prints one line on what the shipped images are."""
    path = bundle / art.ARTIFACT_FILE
    a = art.load(path)
    assert a.meta["copy_ratio"]["spaces"]["pixels"]["images"] == len(a.tensors["synthetic.labels"])
    assert "ratios" not in a.meta["copy_ratio"]["spaces"]["pixels"]  # the per-image list stays in the run
    r = CliRunner().invoke(app, ["inspect", str(bundle)])
    assert r.exit_code == 0 and "synthetic set: copy ratio median" in r.stdout, r.stderr
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--json"])
    assert r.exit_code in (0, 3) and json.loads(r.stdout)["copy_ratio"] == a.meta["copy_ratio"], r.stderr
    r = CliRunner().invoke(app, ["deploy-check", str(bundle)])
    assert r.exit_code in (0, 3) and "synthetic set: copy ratio median" in r.stdout, r.stderr
    meta = {k: v for k, v in a.meta.items() if k != "copy_ratio"}
    art.write(path, a.tensors, meta)
    r = CliRunner().invoke(app, ["inspect", str(bundle)])
    assert r.exit_code == 0 and "synthetic set: copy ratio not recorded" in r.stdout, r.stderr


def test_the_optional_host_figures_are_accepted_null_or_in_range(bundle):
    path = bundle / art.ARTIFACT_FILE
    a = art.load(path)
    a.meta["reference"].update(
        golden_heldout_top1=0.9, golden_heldout_images=300, expected_edge_top1=None, expected_edge_images=None
    )
    art.write(path, a.tensors, a.meta)
    assert art.read(path).meta["reference"]["golden_heldout_top1"] == 0.9
    r = CliRunner().invoke(app, ["inspect", str(bundle)])
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("recorded", [3.0, None])
def test_the_device_fits_at_the_recorded_strength_or_cross_validates_without_one(bundle, recorded):
    """Format 1.6's reference.device_ridge is what deploy-check's fit uses (whatever pack chose);
    null (or an older bundle) leaves the choice to the views' cross-validation; --ridge overrides both."""
    path = bundle / art.ARTIFACT_FILE
    a = art.load(path)
    a.meta["reference"]["device_ridge"] = recorded
    art.write(path, a.tensors, a.meta)

    def fine_tune(*extra):
        r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--json", *extra])
        assert r.exit_code in (0, 3), r.stderr
        return next(c["detail"] for c in json.loads(r.stdout)["checks"] if c["name"] == "fine-tune")

    detail = fine_tune()
    if recorded is None:
        assert "(cross-validated on the synthetic images)" in detail, detail
    else:
        assert detail.startswith("ridge 3 (pack's choice on held-out real images)"), detail
    assert fine_tune("--ridge", "0.01").startswith("ridge 0.01 on "), "--ridge overrides the record"
