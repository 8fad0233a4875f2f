"""The files the device writes beside a bundle, one set per backbone variant, each bound to the
artifact and to the backbone graph it serves, validated (never trusted) on every load.

    projector.fit.<variant>.safetensors    deploy-check's closed-form projector fit
    projector.adapt.<variant>.safetensors  a projector adapted to the device's own labelled images
    runtime.<variant>.json                 deploy-check's measured onnxruntime setting (intra-op threads)

One file per variant, so a deploy-check of one variant never replaces another's fit. Loading
prefers a valid ``adapt`` projector over the ``fit`` one of the same variant. A bundle fitted by
an older edgedd holds one ``projector.finetuned.safetensors`` (:data:`LEGACY_FILE`): it is loaded
for the variant its metadata records, when that variant has no file of its own, and is not
considered for the other variant.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgedd.core.atomic import write_bytes
from edgedd.core.errors import EdgeddError

if TYPE_CHECKING:
    from .bundle import Bundle

VARIANTS = ("fp32", "int8")  # the backbone graphs a bundle can hold ("int8" only if packed with --int8)
KINDS = ("adapt", "fit")  # projector sidecars, in the order loading prefers them
LEGACY_FILE = "projector.finetuned.safetensors"
MAX_SETTINGS_BYTES = 4096
MAX_THREADS = 1024


def sidecar_path(directory: str | os.PathLike, variant: str, kind: str) -> Path:
    """The projector sidecar of ``kind`` ("fit", "adapt") for backbone ``variant`` ("fp32", "int8")."""
    if variant not in VARIANTS or kind not in KINDS:
        raise ValueError(f"no sidecar for variant {variant!r} and kind {kind!r}")
    return Path(directory) / f"projector.{kind}.{variant}.safetensors"


def settings_path(directory: str | os.PathLike, variant: str) -> Path:
    """The runtime settings deploy-check measured for backbone ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"no settings for variant {variant!r}")
    return Path(directory) / f"runtime.{variant}.json"


def device_files() -> frozenset[str]:
    """Every name the device may write beside a bundle (so pack --overwrite counts them as the bundle's own)."""
    names = {LEGACY_FILE} | {f"runtime.{v}.json" for v in VARIANTS}
    return frozenset(names | {f"projector.{k}.{v}.safetensors" for k in KINDS for v in VARIANTS})


def binding(b: Bundle) -> dict[str, str]:
    """What every sidecar records and must match on load: this artifact, this backbone graph."""
    return {
        "artifact_sha256": b.artifact.file_sha256,
        "backbone": b.variant,
        "backbone_sha256": b.graph_sha256["backbone"],
    }


def refit_command(variant: str) -> str:
    return "edgedd deploy-check" + (" --int8" if variant == "int8" else "")


@dataclass
class Found:
    """A projector sidecar chosen for a bundle's variant: which file, of which kind."""

    path: Path
    kind: str  # "fit", "adapt", or "fit" for the legacy file


def _legacy_variant(path: Path) -> str | None:
    """The variant a legacy sidecar's metadata records; None when it cannot be read (the loader says why)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("backbone")
    except Exception:  # safetensors' own error types: the full load reports it
        return None


def find_projector(b: Bundle) -> Found | None:
    """The projector sidecar for ``b``'s variant, by preference (:data:`KINDS`), or the legacy file
    when it records this variant (or cannot be read, so that loading it says what is wrong)."""
    for kind in KINDS:
        path = sidecar_path(b.directory, b.variant, kind)
        if os.path.lexists(path):
            return Found(path, kind)
    legacy = b.directory / LEGACY_FILE
    if os.path.lexists(legacy):
        recorded = _legacy_variant(legacy) if legacy.is_file() and not legacy.is_symlink() else None
        if recorded not in VARIANTS or recorded == b.variant:
            return Found(legacy, "fit")
    return None


def read_settings(b: Bundle) -> dict | None:
    """The runtime settings deploy-check stored for ``b``'s variant, validated; None if there are none
    or they were measured for another artifact or backbone graph (a speed hint, unlike a projector,
    changes no answer: a stale one is ignored, not refused)."""
    path = settings_path(b.directory, b.variant)
    if not os.path.lexists(path):
        return None

    def bad(what: str) -> EdgeddError:
        return EdgeddError(
            f"{path} is not valid runtime settings for this bundle ({what})",
            f"delete it and run {refit_command(b.variant)} again, or pass --threads N",
        )

    if path.is_symlink() or not path.is_file():
        raise bad("not a regular file")
    if path.stat().st_size > MAX_SETTINGS_BYTES:
        raise bad("too large")
    try:
        s = json.loads(path.read_text(encoding="utf-8"))
    except (
        OSError,
        ValueError,
        RecursionError,
    ):  # RecursionError: nesting past the parser's limit, well under the size cap
        raise bad("damaged") from None
    if not isinstance(s, dict):
        raise bad("not a JSON object")
    if any(
        s.get(k) != v for k, v in binding(b).items()
    ):  # measured for a bundle since re-packed: not this one's, ignored
        return None
    t = s.get("intra_op_threads")
    if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= MAX_THREADS:
        raise bad(f"intra_op_threads is {str(t)[:20]}, not a count from 1 to {MAX_THREADS}")
    if t > (os.cpu_count() or 1):  # deploy-check tries 1 .. this device's CPU count: more was measured elsewhere (or
        return None  # forged), and every thread past the cores spins, so predict would crawl; ignored like a stale file
    return s


def write_settings(b: Bundle, threads: int, table: list[dict]) -> Path:
    """Store the chosen intra-op thread count (and the table it was chosen from) for ``b``'s variant."""
    path = settings_path(b.directory, b.variant)
    body = {**binding(b), "intra_op_threads": int(threads), "latency_ms": table}
    write_bytes(path, json.dumps(body, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n")
    return path
