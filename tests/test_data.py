"""Data sources: ImageFolder formats and colour modes, the embedded default, and bad input."""

import numpy as np
import pytest
from PIL import Image

from edgedd.core.errors import EdgeddError
from edgedd.core.images import load_canvas, open_dataset, to_rgb
from edgedd.host.data import CanvasDataset


def test_image_folder_scan_order_and_formats(image_folder):
    src = open_dataset(image_folder)
    assert src.class_names == ["circle", "square", "stripes"]
    assert len(src) == 18 and np.bincount(src.labels).tolist() == [6, 6, 6]
    exts = {p.rsplit(".", 1)[1] for p in src.paths}
    assert exts == {"png", "jpg", "bmp", "webp"}
    ds = CanvasDataset(src, 24, "bicubic")
    for i in range(len(ds)):
        canvas, label, err = ds[i]
        assert err == "" and canvas.shape == (24, 24, 3) and canvas.dtype == np.uint8


def test_modes_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (200, 100, 50, 0))  # fully transparent: composited over black
    assert np.asarray(to_rgb(rgba)).max() == 0
    assert to_rgb(Image.new("L", (4, 4), 128)).mode == "RGB"
    assert to_rgb(Image.new("P", (4, 4))).mode == "RGB"


def test_uppercase_extensions_and_hidden_files(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / c / "X.JPEG", format="JPEG")
        (tmp_path / c / ".DS_Store").write_bytes(b"junk")
        (tmp_path / c / "notes.txt").write_text("not an image")
    assert len(open_dataset(tmp_path)) == 2


def test_embedded_default_split():
    train, test = open_dataset("embedded:mnist"), open_dataset("embedded:mnist/test")
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(train.labels).tolist() == [400] * 10
    assert train.pixels.shape == (4000, 28, 28, 3) and train.pixels.dtype == np.uint8
    assert train.fingerprint != test.fingerprint
    # deterministic: the same split every time
    assert np.array_equal(open_dataset("embedded:mnist").pixels[:5], train.pixels[:5])
    # disjoint: no test image equals a train image of the same index set
    tr = {x.tobytes() for x in train.pixels[:, :, :, 0]}
    assert sum(x.tobytes() in tr for x in test.pixels[:, :, :, 0]) < 5  # MNIST has rare duplicates


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "missing", "does not exist"),
        (lambda root: (root / "file.txt").write_text("x") and root / "file.txt", "is a file, not a directory"),
        (lambda root: root, "no class sub-folders"),
    ],
)
def test_bad_roots(tmp_path, make, message):
    with pytest.raises(EdgeddError, match=message):
        open_dataset(make(tmp_path))


def test_unknown_embedded_name():
    with pytest.raises(EdgeddError, match="unknown embedded dataset"):
        open_dataset("embedded:cifar")


def test_corrupt_image_is_reported_by_name(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "ok.png")
    good = (tmp_path / "a" / "ok.png").read_bytes()
    (tmp_path / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(OSError):
        load_canvas(str(tmp_path / "a" / "cut.png"), 8, "bilinear")
    (tmp_path / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "b" / "ok.png")
    ds = CanvasDataset(open_dataset(tmp_path), 8, "bilinear")
    errors = [ds[i][2] for i in range(len(ds)) if ds[i][0] is None]
    assert len(errors) == 1 and "cut.png" in errors[0]


def test_write_image_folder_round_trip(tmp_path):
    from edgedd.core.images import write_image_folder

    root = write_image_folder("embedded:mnist/test", tmp_path / "t", limit=30)
    back = open_dataset(root)
    src = open_dataset("embedded:mnist/test")
    assert len(back) == 30 and len(back.class_names) == 10
    first = np.asarray(Image.open(sorted((root / src.class_names[src.labels[0]]).iterdir())[0]))
    assert np.array_equal(first, src.pixels[0])
