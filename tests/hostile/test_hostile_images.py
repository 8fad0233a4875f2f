"""Images that attack memory: thin strips, decompression bombs, MemoryError; and ordinary images
keep exactly the pixels they had."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from _crafted import one_line_error
from PIL import Image
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core import images
from edgedd.core.images import load_canvas, open_dataset, resize_center_crop

LIMIT_MB = 512


def _resize_center_crop_before(img, size, interpolation):
    """edgedd.core.images.resize_center_crop as it was before thin images were bounded (the reference)."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), images._PIL_RESAMPLE[interpolation])
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def test_ordinary_images_keep_their_exact_pixels(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [
        (40, 30),
        (30, 40),
        (224, 224),
        (640, 480),
        (480, 640),
        (1000, 250),
        (250, 1000),
        (17, 9),
        (300, 299),
        (5, 20),
    ]
    for w, h in shapes:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "x.png")
        for size in (32, 224, 256):
            for interpolation in images._PIL_RESAMPLE:
                want = np.asarray(_resize_center_crop_before(Image.fromarray(arr), size, interpolation))
                got = np.asarray(resize_center_crop(Image.fromarray(arr), size, interpolation))
                assert np.array_equal(got, want), (w, h, size, interpolation)
            assert np.array_equal(
                load_canvas(str(tmp_path / "x.png"), size, "bicubic"),
                np.asarray(_resize_center_crop_before(Image.fromarray(arr), size, "bicubic")),
            )


@pytest.mark.parametrize("wh", [(1, 200_000), (200_000, 1), (3, 50_000), (1000, 4001)])
def test_thin_images_give_the_centre_canvas(wh):
    w, h = wh
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), np.full_like(xx, 7)], -1).astype(
        np.uint8
    )  # ramps
    img = Image.fromarray(arr)
    got = np.asarray(resize_center_crop(img, 32, "bilinear"))
    assert got.shape == (32, 32, 3)
    assert np.all(got[..., 2] == 7)
    mid = arr[h // 2, w // 2]  # the centre of the image stays the centre of the canvas
    assert np.abs(got[15:17, 15:17].reshape(-1, 3).mean(0) - mid).max() <= 3, (got[15:17, 15:17], mid)


def _png(path, w, h):
    Image.new("RGB", (w, h), (200, 40, 40)).save(path)
    return path


def _bomb(path, w=30_000, h=30_000):
    """A valid-looking PNG header announcing w x h pixels (Pillow refuses it on open), a few bytes on disk."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )
    return path


LIMITED = r"""
import json, resource, sys
lim = int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
if sys.argv[2] == "cli":
    from edgedd.cli.host import main
    sys.argv = ["edgedd", *sys.argv[3:]]
    main()
else:  # the host's ImageFolder path (distill's statistics pass decodes through CanvasDataset)
    from edgedd.host.data import CanvasDataset
    from edgedd.core.images import open_dataset
    ds = CanvasDataset(open_dataset(sys.argv[3]), 224, "bicubic")
    print(json.dumps([[None if c is None else list(c.shape), e.split(": ")[1] if e else ""]
                      for c, _, e in (ds[i] for i in range(len(ds)))]))
"""


def _limited(*argv):
    env = dict(os.environ, MALLOC_ARENA_MAX="2")  # glibc reserves 64 MB of address space per thread arena otherwise
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(LIMIT_MB), *argv], capture_output=True, text=True, timeout=300, env=env
    )


def test_thin_images_through_predict_under_an_address_space_limit(packed, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    ordinary = str(next((packed["heldout"] / "circle").iterdir()))
    base = _limited("cli", "predict", str(bundle), ordinary, "--json")
    if base.returncode != 0:
        pytest.skip(
            f"predict does not fit in {LIMIT_MB} MB of address space on this machine at all: {base.stderr[-200:]}"
        )
    strip = _limited("cli", "predict", str(bundle), str(_png(tmp_path / "strip.png", 1, 200_000)), "--json")
    assert strip.returncode == 0 and "Traceback" not in strip.stderr, strip.stderr[
        -2000:
    ]  # before: MemoryError traceback (1.2 GB)
    assert len(json.loads(strip.stdout)["predictions"][0]["top"]) == 3
    huge = _limited("cli", "predict", str(bundle), str(_png(tmp_path / "huge.png", 1, 10_000_000)), "--json")
    assert "Traceback" not in huge.stderr, huge.stderr[-2000:]  # before: a MemoryError traceback asking for ~41 GB
    if huge.returncode != 0:  # decoding 10 M rows itself may not fit: then it is an unreadable image, said in one line
        assert huge.returncode == 1 and huge.stdout == "" and huge.stderr.count("\n") == 1, huge.stderr
        assert huge.stderr.startswith("error: cannot read image") and "MemoryError" in huge.stderr


def test_thin_images_through_the_host_loader_under_an_address_space_limit(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        _png(tmp_path / c / "ok.png", 40, 30)
    _png(tmp_path / "a" / "strip.png", 1, 200_000)
    _png(tmp_path / "b" / "huge.png", 1, 10_000_000)
    _bomb(tmp_path / "b" / "bomb.png")
    r = _limited("data", str(tmp_path))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    items = dict(zip((os.path.basename(p) for p in open_dataset(tmp_path).paths), json.loads(r.stdout), strict=True))
    assert items["ok.png"] == [[224, 224, 3], ""] and items["strip.png"] == [[224, 224, 3], ""]
    assert items["bomb.png"] == [None, "DecompressionBombError"]
    assert items["huge.png"] in ([[224, 224, 3], ""], [None, "MemoryError"])  # skipped and counted, never a crash


def test_bombs_and_memory_errors_are_unreadable_images_on_the_device(packed, tmp_path, monkeypatch):
    bundle = tmp_path / "b"
    shutil.copytree(packed["bundle"], bundle)
    bomb = _bomb(tmp_path / "bomb.png")
    one_line_error(
        CliRunner().invoke(app, ["predict", str(bundle), str(bomb)]), "cannot read image", "DecompressionBombError"
    )
    folder = tmp_path / "data"
    shutil.copytree(packed["heldout"], folder)
    _bomb(folder / "circle" / "zz_bomb.png")
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(folder), "--no-fine-tune", "--json"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output[-2000:]
    detail = next(c["detail"] for c in json.loads(r.stdout)["checks"] if c["name"] == "data accuracy")
    assert "(1 unreadable skipped)" in detail

    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(images.Image, "open", no_memory)
    ok = str(next((packed["heldout"] / "circle").iterdir()))
    one_line_error(CliRunner().invoke(app, ["predict", str(bundle), ok]), "cannot read image", "MemoryError")
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--data", str(folder), "--no-fine-tune"])
    one_line_error(r, "no readable images")  # every image failed: said once, no traceback
