"""Data that is decoded wrong or swallows its own outputs: wide-mode images (16-bit, 32-bit, float),
outputs written inside the data, class folders that link back, over-long class names, and a
metrics.jsonl built to exhaust the report's memory."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from _crafted import one_line_error, run_cli
from PIL import Image
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core import images
from edgedd.core.images import load_canvas, open_dataset, to_rgb
from edgedd.device.inputs import edge_canvas
from edgedd.distillation import metrics
from edgedd.host.data import CanvasDataset

GREY = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every 8-bit level once
RGB = np.stack([GREY, GREY[::-1], GREY.T], axis=-1)


def _png16(path, a: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG (Pillow cannot write 16-bit RGB or grey+alpha): ``a`` (H, W[, C]) uint16."""
    h, w = a.shape[:2]
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in a.reshape(h, w, -1))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _wide(mode: str) -> Image.Image:
    """GREY in a wide mode, at its full range: the 8-bit equivalent is GREY."""
    g = GREY.astype(np.int64)
    if mode.startswith("I;16"):
        return Image.frombytes(mode, (16, 16), (g * 257).astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    return {
        "I": Image.fromarray((g * 257).astype(np.int32)),  # 16-bit values: read as uint16
        "I32": Image.fromarray((g * (2**31 - 1) // 255).astype(np.int32)),  # the full non-negative int32 range
        "Is16": Image.fromarray((g * 257 - 32768).astype(np.int32)),  # signed 16-bit (a TIFF's I;16S)
        "F": Image.fromarray((g / 255).astype(np.float32)),  # [0, 1]
        "F255": Image.fromarray(g.astype(np.float32)),
    }[mode]  # [0, 255]: Pillow's convert("F") of L


WIDE = ["I;16", "I;16L", "I;16B", "I", "I32", "Is16", "F", "F255"]


@pytest.mark.parametrize("mode", WIDE)
def test_wide_greyscale_modes_decode_like_their_8bit_equivalent(mode, tmp_path):
    img = _wide(mode)
    assert np.abs(np.asarray(to_rgb(img), dtype=int) - GREY[..., None]).max() <= 1  # in memory (Bundle.predict)
    f = tmp_path / "x.tiff"
    img.save(f)  # TIFF carries every one of them
    back = load_canvas(str(f), 16, "nearest")  # a file (distill, export-data, predict, deploy-check --data)
    assert np.abs(back.astype(int) - GREY[..., None]).max() <= 1, (mode, Image.open(f).mode)


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]
)
def test_every_8bit_mode_decodes_like_pillows_rgb(mode, tmp_path):
    """The narrow modes: alpha (opaque here) over black, the rest as Pillow converts them."""
    base = Image.fromarray(RGB)
    img = base.convert("L").convert(mode) if mode in ("1", "L", "LA", "P", "PA") else base.convert(mode)
    img = base.convert("LA").convert("La") if mode == "La" else img  # Pillow makes La only from LA
    ref = np.asarray(img.convert("LA").convert("RGB") if mode == "La" else img.convert("RGB"), dtype=int)
    assert np.abs(np.asarray(to_rgb(img), dtype=int) - ref).max() <= 1, mode
    for fmt in ("PNG", "TIFF", "WEBP"):
        f = tmp_path / f"x.{fmt.lower()}"
        try:
            img.save(f, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        except (OSError, ValueError, KeyError):
            continue  # this format cannot carry this mode
        with Image.open(f) as opened:
            opened.load()
            want = np.asarray(to_rgb(opened), dtype=int)  # what the file holds, read by the one decoder
            if opened.mode not in ("P", "PA") and fmt != "WEBP":  # same pixels as in memory
                assert np.abs(want - ref).max() <= 1, (mode, fmt, opened.mode)
        assert np.array_equal(load_canvas(str(f), 16, "nearest").astype(int), want)


@pytest.mark.parametrize("colour_type, channels", [(0, 1), (4, 2), (2, 3), (6, 4)])
def test_16bit_pngs_of_every_colour_type(colour_type, channels, tmp_path):
    a = np.stack([GREY.astype(np.uint16) * 257] * channels, axis=-1)
    if channels in (2, 4):
        a[..., -1] = 65535  # opaque
    _png16(tmp_path / "x.png", a, colour_type)
    assert np.abs(load_canvas(str(tmp_path / "x.png"), 16, "nearest").astype(int) - GREY[..., None]).max() <= 1


def _mid_grey_folder(root):
    for cls, mode in (("a", "I;16"), ("b", "I"), ("c", "F")):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            img = {
                "I;16": lambda: Image.fromarray(np.full((20, 24), 32768, np.uint16)),
                "I": lambda: Image.fromarray(np.full((20, 24), 2**30, np.int32)),
                "F": lambda: Image.fromarray(np.full((20, 24), 0.5, np.float32)),
            }[mode]()
            img.save(root / cls / f"{i}.{'png' if mode == 'I;16' else 'tif'}")
    return root


def test_mid_grey_wide_images_are_mid_grey_on_host_and_device(tmp_path):
    data = _mid_grey_folder(tmp_path / "data")
    src = open_dataset(data)
    assert src.num_classes == 3 and len(src) == 6
    for i in range(len(src)):
        canvas, _, err = CanvasDataset(src, 16, "bilinear")[i]  # distill's / evaluate's data path
        assert not err and abs(float(canvas.mean()) - 127.5) <= 2, (src.paths[i], canvas.mean())
        device = edge_canvas(src.paths[i], 16, "bilinear")  # predict's (and Bundle.predict's) path
        assert abs(float(device.mean()) - 127.5) <= 2
    r = CliRunner().invoke(app, ["export-data", str(data), str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    for png in (tmp_path / "out").rglob("*.png"):
        assert abs(float(np.asarray(Image.open(png)).mean()) - 127.5) <= 2, png


# ----------------------------------------------------------------------------- outputs inside the data


def _folder(root, classes=("circle", "square"), n=2):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(root / c / f"{i}.png")
    return root


def test_outputs_inside_the_data_are_refused(tmp_path):
    data = _folder(tmp_path / "data")
    link = tmp_path / "link"
    link.symlink_to(data)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    for args in (
        ["distill", data, "-b", "test_vit", "--weights", "random", "-o", data / "run1"],
        ["distill", link, "-b", "test_vit", "--weights", "random", "-o", data / "run1"],  # through a link
        ["distill", data, "-b", "test_vit", "--weights", "random", "-o", link / "run1"],
        ["distill", data / "circle", "-b", "test_vit", "--weights", "random", "-o", data, "--overwrite"],  # holds it
        ["export-data", data, data / "sub"],
        ["export-data", link, data / "sub"],
        ["export-data", data, data],
    ):
        one_line_error(CliRunner().invoke(app, list(map(str, args))), "inside")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before  # nothing written


def test_pack_and_evaluate_refuse_a_bundle_or_run_inside_the_data(packed, tmp_path):
    data = packed["data"]  # the run's training data
    one_line_error(
        CliRunner().invoke(app, ["pack", str(packed["run"]), "-o", str(data / "bundle")]), "inside", "training data"
    )
    assert not (data / "bundle").exists()
    one_line_error(
        CliRunner().invoke(app, ["evaluate", str(packed["run"]), "--test-data", str(packed["root"])]),
        "inside",
        "test data",
    )


def test_class_folders_that_link_back_or_are_outputs_are_skipped_with_a_warning(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    clean = open_dataset(data)
    (data / "loop").symlink_to(".")  # the data root again: every image counted twice
    (data / "again").symlink_to("circle")  # a second name for a class
    (data / "up").symlink_to("..")  # a folder holding the data root
    (data / "inner").symlink_to(data / "square")  # absolute link
    for name, marker in (
        ("run1", "run.json"),
        ("bundle", "edgedd.artifact.safetensors"),
        ("export", images.EXPORT_MARKER),
    ):
        _folder(data / name, ("x",))
        (data / name / marker).write_text("{}")
    capsys.readouterr()
    src = open_dataset(data)
    err = capsys.readouterr().err
    assert src.class_names == clean.class_names and src.paths == clean.paths and src.fingerprint == clean.fingerprint
    for name in ("loop", "again", "up", "inner", "run1", "bundle", "export"):
        assert f"warning: skipping folder {data / name}:" in err, (name, err)
    assert len(err.strip().splitlines()) == 7
    p = run_cli(["export-data", data, tmp_path / "out", "--json"])  # and through the CLI: exit 0, the same 2 classes
    assert p.returncode == 0 and json.loads(p.stdout)["classes"] == 2 and json.loads(p.stdout)["images"] == 4, p.stderr


def test_run_json_is_the_run_directorys_marker():
    from edgedd.device import artifact
    from edgedd.distillation import rundir

    names = [n for n, _ in images.OUTPUT_MARKERS]
    assert rundir.RUN_JSON in names and artifact.ARTIFACT_FILE in names and images.EXPORT_MARKER in names


# ----------------------------------------------------------------------------- class names


def test_an_over_long_class_name_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    data = _folder(tmp_path / "data", ("ok", "a-name-over-the-cap"))
    monkeypatch.setattr(images, "MAX_CLASS_NAME_CHARS", 8)  # a real file system allows 255 bytes: the cap is 256
    for args in (
        ["export-data", data, tmp_path / "out"],
        ["distill", data, "-b", "test_vit", "--weights", "random", "-o", tmp_path / "run"],
    ):
        one_line_error(
            CliRunner().invoke(app, list(map(str, args))),
            str(data / "a-name-over-the-cap"),
            "19 characters",
            "at most 8",
        )
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
    monkeypatch.undo()
    longest = _folder(tmp_path / "long", ("b", "x" * 255))  # the longest name a file system allows passes
    assert open_dataset(longest).class_names[1] == "x" * 255


# ----------------------------------------------------------------------------- metrics.jsonl


def test_metrics_reading_is_bounded_and_counts_what_it_skips(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "MAX_LINE_BYTES", 256)
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for step in range(1, 10_001):
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "loss": 1 / step,
                        "resolution": 8,
                        **({"flow_cosine": 0.5} if step % 500 == 0 else {}),
                    }
                )
                + "\n"
            )
            if step == 5000:
                f.write('{"step": 5000, "pad": "' + "x" * 100_000 + '"}\n')  # too long: never read whole
                f.write('{"step": 5001, "loss": NaN}\n{"step": 5002, "loss": -Infinity}\ngarbage\n["step"]\n')
    rows, steps, skipped = metrics.read_metrics_sampled(path, max_points=50)
    assert steps == 10_000 and skipped == {"too long": 1, "NaN/Infinity": 2, "not JSON": 1, "not a metrics row": 1}
    assert len(rows) <= 2 * 50 + 20 + 2  # the strided sample, the 20 flow-cosine rows and the last
    assert (
        [r["step"] for r in rows] == sorted(r["step"] for r in rows)
        and rows[0]["step"] == 1
        and rows[-1]["step"] == 10_000
    )
    assert sum("flow_cosine" in r for r in rows) == 20  # the sparse curve keeps all its points
    assert len(metrics.read_metrics(path)) == 10_000  # the resume path keeps every row


def test_report_warns_once_about_skipped_metrics_lines(packed, tmp_path, monkeypatch, capsys):
    from edgedd.evaluation.report import write_report

    run = tmp_path / "run"
    shutil.copytree(packed["run"], run)
    monkeypatch.setattr(metrics, "MAX_LINE_BYTES", 256)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "pad": "' + "y" * 5000 + '"}\n{"step": 100, "loss": NaN}\nnot json\n')
    good = len(metrics.read_metrics(packed["run"] / "metrics.jsonl"))
    capsys.readouterr()
    r = write_report(run)
    err = capsys.readouterr().err.strip()
    assert r["metrics_steps"] == good and r["plots"] == ["loss", "flow_cosine"]
    assert err.startswith("warning: ") and "\n" not in err and "skipped 3 line(s)" in err, err
    assert "1 too long" in err and "1 NaN/Infinity" in err and "1 not JSON" in err
    assert os.path.getsize(r["report"]) == r["bytes"]
