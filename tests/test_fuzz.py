"""Damaged artifacts and bundles: every one ends in a one-line error and exit code 1, never a
traceback and never an answer. 200+ cases: truncations, bit flips (header and data), header edits,
missing, swapped and foreign ONNX files."""

from __future__ import annotations

import random
import shutil
import struct

import pytest
from typer.testing import CliRunner

from edgedd.cli import app
from edgedd.device.artifact import FORMAT, FORMAT_MINOR

ART = "edgedd.artifact.safetensors"


def _cases(data: bytes):
    rng = random.Random(1234)
    (hlen,) = struct.unpack("<Q", data[:8])
    header_end = 8 + hlen
    for _ in range(80):
        n = rng.randrange(0, len(data))
        yield f"truncated to {n}", data[:n]
    for _ in range(50):  # flips in the header (JSON, lengths, metadata, hash)
        pos = rng.randrange(0, header_end)
        b = bytearray(data)
        b[pos] ^= 1 << rng.randrange(8)
        yield f"header bit flip at {pos}", bytes(b)
    for _ in range(50):  # flips in the tensor bytes
        pos = rng.randrange(header_end, len(data))
        b = bytearray(data)
        b[pos] ^= 1 << rng.randrange(8)
        yield f"data bit flip at {pos}", bytes(b)
    tag = f'"edgedd.format":"{FORMAT}"'.encode()
    edits = [
        (tag, b'"edgedd.format":"2.0"'),
        (tag, f'"edgedd.format":"1.{FORMAT_MINOR + 1}"'.encode()),
        (tag, b'"edgedd.format":"x.y"'),
        (tag, f'"edgedd.formax":"{FORMAT}"'.encode()),
        (b'"__metadata__"', b'"__metadatum"'),
        (b'"F32"', b'"F64"'),
        (b'"U8"', b'"I8"'),
        (b'circle', b'CIRCLE'),
        (b'test_vit', b'test_vix'),
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


def _assert_clean_failure(result, case):
    assert result.exit_code == 1, (case, result.exit_code, result.stdout[-300:], result.stderr[-300:])
    assert isinstance(result.exception, SystemExit), (case, repr(result.exception))  # not an uncaught error
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, (case, err)
    assert result.stdout == "", case  # no answer


def test_damaged_artifacts(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    data = (packed["bundle"] / ART).read_bytes()
    cases = list(_cases(data))
    assert len(cases) >= 200
    runner = CliRunner()
    for case, blob in cases:
        assert blob != data, case
        (bundle / ART).write_bytes(blob)
        cmd = ["deploy-check", str(bundle), "--json"] if len(case) % 2 else ["predict", str(bundle), str(next((packed["data"] / "circle").iterdir()))]
        _assert_clean_failure(runner.invoke(app, cmd), case)


@pytest.mark.parametrize(
    "damage",
    ["missing backbone", "missing projector", "missing classifier", "swap backbone projector", "swap projector classifier",
     "swap backbone classifier", "garbage backbone", "missing artifact", "bundle is a file", "foreign projector"],
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
    assert r.returncode == 1 and r.stderr.startswith("error: artifact") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
