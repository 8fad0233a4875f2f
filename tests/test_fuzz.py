"""Damaged artifacts and bundles: every one ends in a one-line error and exit code 1, never a
traceback and never an answer. 1,000+ artifact mutations: truncations, bit flips (header and data),
byte edits, and edits that keep the header valid JSON (a number, a string, a shape, an offset, a
dtype, a key added, removed or reordered, re-indented, re-padded, in the header or in the metadata
it carries); all go through the verifier in-process, a sample through the CLI. Then missing,
swapped and foreign ONNX files."""

from __future__ import annotations

import json
import random
import shutil
import struct

import pytest
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.errors import EdgeddError
from edgedd.device import artifact as art

ART = "edgedd.artifact.safetensors"


def _cases(data: bytes):
    rng = random.Random(1234)
    (hlen,) = struct.unpack("<Q", data[:8])
    header_end = 8 + hlen
    for _ in range(150):
        n = rng.randrange(0, len(data))
        yield f"truncated to {n}", data[:n]
    for _ in range(150):  # flips in the header (JSON, lengths, metadata, hash)
        pos = rng.randrange(0, header_end)
        b = bytearray(data)
        b[pos] ^= 1 << rng.randrange(8)
        yield f"header bit flip at {pos}", bytes(b)
    for _ in range(150):  # flips in the tensor bytes
        pos = rng.randrange(header_end, len(data))
        b = bytearray(data)
        b[pos] ^= 1 << rng.randrange(8)
        yield f"data bit flip at {pos}", bytes(b)
    tag = f'"edgedd.format":"{art.FORMAT}"'.encode()
    edits = [
        (tag, b'"edgedd.format":"2.0"'),
        (tag, f'"edgedd.format":"1.{art.FORMAT_MINOR + 1}"'.encode()),
        (tag, b'"edgedd.format":"x.y"'),
        (tag, f'"edgedd.formax":"{art.FORMAT}"'.encode()),
        (b'"__metadata__"', b'"__metadatum"'),
        (b'"F32"', b'"F64"'),
        (b'"U8"', b'"I8"'),
        (b"circle", b"CIRCLE"),
        (b"test_vit", b"test_vix"),
        (b'"edgedd.sha256":"', b'"edgedd.sha256":"0'),
    ]
    for old, new in edits:
        assert old in data, old
        yield f"edit {old!r}->{new!r}", data.replace(old, new, 1)
    for n in (0, 1, hlen - 8, hlen + 8, len(data), 2**40, 2**64 - 1):
        yield f"header length {n}", struct.pack("<Q", n) + data[8:]
    yield "empty", b""
    yield "not safetensors", b"PK\x03\x04" + b"\x00" * 100
    yield "json only", b'{"hello": "world"}'
    for i in range(560):  # edits that keep the header valid JSON
        case, blob = _json_edit(data, rng, i % len(JSON_EDITS))
        yield f"json edit {i} {case}", blob


# ----------------------------------------------------------------------------- valid-JSON header edits


def _header(data: bytes) -> tuple[dict, dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    h = json.loads(data[8 : 8 + n])
    return h, json.loads(h["__metadata__"]["edgedd.meta"]), data[8 + n :]


def _blob(h: dict, rest: bytes, indent=None, pad: str = " ") -> bytes:
    text = json.dumps(h, indent=indent, separators=None if indent else (",", ":"))
    text += pad * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + rest


def _leaves(obj, path=()):
    """(path, value) of every number, string and bool in a JSON value."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    else:
        yield path, obj


def _changed(v, rng):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return rng.choice([v + 1, -v - 1, v * 2 + 1, 0 if v else 1, 0.5 if v != 0.5 else 0.25])
    if isinstance(v, str):
        return rng.choice([v + "x", v[:-1], v.upper() if v != v.upper() else v.lower() + "y", ""]) if v else "x"
    return 1


def _edit_at(obj, path, fn):
    for p in path[:-1]:
        obj = obj[p]
    fn(obj, path[-1])


def _meta_leaf(h, meta, rest, rng):  # a number, string or bool inside the hashed metadata
    path, v = rng.choice(list(_leaves(meta)))
    _edit_at(meta, path, lambda o, k: o.__setitem__(k, _changed(v, rng)))
    h["__metadata__"]["edgedd.meta"] = art.canonical_json(meta)
    return f"meta {'/'.join(map(str, path))}", _blob(h, rest)


def _tensor_field(h, meta, rest, rng):  # a shape dim, an offset or the dtype of one entry
    name = rng.choice([k for k in h if k != "__metadata__"])
    field = rng.choice(["shape", "data_offsets", "dtype"])
    if field == "dtype":
        h[name]["dtype"] = rng.choice(
            [d for d in ("F32", "F64", "F16", "I64", "I32", "U8", "I8", "BOOL", "X9") if d != h[name]["dtype"]]
        )
    elif h[name][field]:
        i = rng.randrange(len(h[name][field]))
        h[name][field][i] = max(0, _changed(h[name][field][i], rng)) if rng.random() < 0.9 else str(h[name][field][i])
    else:
        h[name][field].append(1)
    return f"{name} {field}", _blob(h, rest)


def _add_key(h, meta, rest, rng):
    where = rng.choice(["meta", "metadata", "entry", "tensor"])
    if where == "meta":
        meta[rng.choice(["zz", "aa", "class_names2"])] = rng.choice([1, "x", None, [1]])
        h["__metadata__"]["edgedd.meta"] = art.canonical_json(meta)
    elif where == "metadata":
        h["__metadata__"]["edgedd.extra"] = "x" * rng.choice([1, 1000])
    elif where == "entry":
        h[rng.choice([k for k in h if k != "__metadata__"])]["note"] = 1
    else:  # an empty tensor after the last: fits the byte layout exactly, so only the hash can tell
        end = max(e["data_offsets"][1] for k, e in h.items() if k != "__metadata__")
        h["zzz.extra"] = {"dtype": "F32", "shape": [0], "data_offsets": [end, end]}
    return f"add {where}", _blob(h, rest)


def _remove_key(h, meta, rest, rng):
    where = rng.choice(["meta", "metadata", "entry", "tensor"])
    if where == "meta":
        meta.pop(rng.choice(list(meta)))
        h["__metadata__"]["edgedd.meta"] = art.canonical_json(meta)
    elif where == "metadata":
        h["__metadata__"].pop(rng.choice(list(h["__metadata__"])))
    elif where == "entry":
        h[rng.choice([k for k in h if k != "__metadata__"])].pop(rng.choice(["dtype", "shape", "data_offsets"]))
    else:
        h.pop(rng.choice([k for k in h if k != "__metadata__"]))
    return f"remove {where}", _blob(h, rest)


def _reorder(h, meta, rest, rng):
    where = rng.choice(["top", "metadata", "entry"])
    if where == "top":
        items = list(h.items())
        rng.shuffle(items)
        h = dict(items) if list(dict(items)) != list(h) else dict(reversed(items))
    elif where == "metadata":
        h["__metadata__"] = dict(reversed(list(h["__metadata__"].items())))
    else:
        name = rng.choice([k for k in h if k != "__metadata__"])
        h[name] = dict(reversed(list(h[name].items())))
    return f"reorder {where}", _blob(h, rest)


def _reformat(h, meta, rest, rng):
    how = rng.choice(["indent", "meta indent", "spaces", "tab pad", "newline pad"])
    if how == "indent":
        return how, _blob(h, rest, indent=rng.choice([0, 1, 2, 4]))
    if how == "meta indent":
        h["__metadata__"]["edgedd.meta"] = json.dumps(meta, sort_keys=True, indent=rng.choice([None, 1]))
        return how, _blob(h, rest)
    if how == "spaces":
        text = json.dumps(h)  # ", " and ": " separators
        return how, struct.pack("<Q", len(text) + (-len(text) % 8)) + (text + " " * (-len(text) % 8)).encode() + rest
    text = json.dumps(h, separators=(",", ":"))
    pad = "\t" if how == "tab pad" else "\n"
    text += pad * (-len(text) % 8 or 8)
    return how, struct.pack("<Q", len(text)) + text.encode() + rest


JSON_EDITS = [_meta_leaf, _meta_leaf, _tensor_field, _add_key, _remove_key, _reorder, _reformat]


def _json_edit(data: bytes, rng: random.Random, kind: int) -> tuple[str, bytes]:
    h, meta, rest = _header(data)
    return JSON_EDITS[kind](h, meta, rest, rng)


def _assert_clean_failure(result, case):
    assert result.exit_code == 1, (case, result.exit_code, result.stdout[-300:], result.stderr[-300:])
    assert isinstance(result.exception, SystemExit), (case, repr(result.exception))  # not an uncaught error
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, (case, err)
    assert result.stdout == "", case  # no answer


def test_damaged_artifacts(packed, tmp_path):
    """Every mutation is refused by the verifier in-process (an EdgeddError, nothing else); every
    25th also through the CLI (deploy-check, predict, inspect in turn): one line, exit 1."""
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    data = (packed["bundle"] / ART).read_bytes()
    cases = list(_cases(data))
    assert len(cases) >= 1000 and sum(c.startswith("json edit") for c, _ in cases) >= 500
    image = str(next((packed["data"] / "circle").iterdir()))
    commands = (["deploy-check", str(bundle), "--json"], ["predict", str(bundle), image], ["inspect", str(bundle)])
    runner = CliRunner()
    for i, (case, blob) in enumerate(cases):
        assert blob != data, case
        with pytest.raises(EdgeddError) as e:  # anything else (a traceback) fails the test
            art.from_bytes(blob)
        assert e.value.exit_code == 1 and "\n" not in e.value.one_line(), case
        if i % 25 == 0:
            (bundle / ART).write_bytes(blob)
            _assert_clean_failure(runner.invoke(app, commands[(i // 25) % 3]), case)


@pytest.mark.parametrize(
    "damage",
    [
        "missing backbone",
        "missing projector",
        "missing classifier",
        "swap backbone projector",
        "swap projector classifier",
        "swap backbone classifier",
        "garbage backbone",
        "missing artifact",
        "bundle is a file",
        "foreign projector",
    ],
)
def test_damaged_bundles(packed, tmp_path, damage):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    words = damage.split()
    if words[0] == "missing" and words[1] == "artifact":
        (bundle / ART).unlink()
    elif words[0] == "missing":
        (bundle / f"{words[1]}.onnx").unlink()
    elif words[0] == "swap":
        a, b = bundle / f"{words[1]}.onnx", bundle / f"{words[2]}.onnx"
        da, db = a.read_bytes(), b.read_bytes()
        a.write_bytes(db)
        b.write_bytes(da)
    elif words[0] == "garbage":
        (bundle / "backbone.onnx").write_bytes(b"\x08\x07" + b"\x00" * 64)
    elif words[0] == "foreign":
        shutil.copy(bundle / "classifier.onnx", bundle / "projector.onnx")
    else:
        shutil.rmtree(bundle)
        bundle.write_text("not a bundle")
    _assert_clean_failure(CliRunner().invoke(app, ["deploy-check", str(bundle)]), damage)


def test_process_level_failure_has_no_traceback(packed, tmp_path):
    """The installed entry point, not just the in-process runner."""
    import subprocess
    import sys

    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    data = bytearray((bundle / ART).read_bytes())
    data[-5] ^= 0xFF
    (bundle / ART).write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "edgedd", "deploy-check", str(bundle)], capture_output=True, text=True)
    assert (
        r.returncode == 1
        and r.stderr.startswith("error: artifact")
        and r.stderr.count("\n") == 1
        and "Traceback" not in r.stderr
    )
