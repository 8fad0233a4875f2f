"""``edgedd pack``: a run directory -> a bundle directory an edge device can verify and use.

Bundle layout (docs/ARTIFACT.md):

    edgedd.artifact.safetensors   synthetic set (uint8), labels, classifier, projector, targets,
                                  view boxes, self-test, metadata; sha256 over all of it
    backbone.onnx                 edge backbone phi_B (dynamic batch)
    projector.onnx                P: D_B -> D_A
    classifier.onnx               golden classifier: D_A -> C
    backbone.int8.onnx            with --int8: phi_B quantised to int8 (static, QDQ, per-channel weights,
                                  calibrated on the synthetic views)
    backbone.static.onnx          phi_B with its batch axis fixed (--static-batch, default 1): what a
    backbone.int8.static.onnx     phone accelerator takes whole (export/mobile.py); the int8 one with --int8
    *.ort, required_operators.config   with --ort: every graph above in ORT format, and the operators
                                  an ORT Mobile minimal build needs for them

Steps, one function each, in the order :func:`_pack` calls them: load the run and re-create its
distillation backbone A (the weights hash must match the run's) and the edge backbone B
(:func:`_load_backbones`); quantise the synthetic pixels to uint8 *first*, so every target is
computed on the pixels the device will see; render K views per image (its centre crop, then flip + crops of
>= --view-crop-min of the area: host/augment.device_views), phi_A(views) the
targets, phi_B(views) the projector's inputs (:func:`_render_targets`); train the reference
projector in torch and compute the reference figures on the synthetic set (:func:`_fit_projector`);
measure the top-1 the device should reach on real images (the edge path on the golden classifier's
held-out slice of the training data, deploy-check's ``expected``; edge_path.py); export
and validate the three graphs (:func:`_export_graphs`); write the self-test (:func:`_selftest`);
with --int8, refuse a quantised backbone whose top-1 on those held-out images (the synthetic set
without them) drops by more than ``int8_max_drop`` (:func:`_int8_gate`); add the fixed-shape
backbones, their mobile-readiness figures and, with --ort, the ORT-format files (:func:`_mobile_graphs`). The bundle
appears atomically (built in a temporary
sibling directory, then renamed; :func:`_write_bundle`).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch

from edgedd import __version__
from edgedd.backbones.forward import resolve_device
from edgedd.backbones.loader import BackboneInfo, load_backbone
from edgedd.core.atomic import (
    check_replaceable,
    make_temp_dir,
    real_out,
    remove_stale_temp_dirs,
    replace_dir,
    sha256_file,
    write_bytes,
)
from edgedd.core.config import PackConfig, device_view_augment, to_dict
from edgedd.core.errors import EdgeddError
from edgedd.core.lock import lock
from edgedd.core.paths import refuse_overlap
from edgedd.device import artifact as art
from edgedd.device.ridge import choose_strength, projector_prior
from edgedd.device.ridge import fit_ridge as fit_projector_ridge
from edgedd.device.schema import copy_ratio_problem
from edgedd.device.sidecar import device_files
from edgedd.distillation.rundir import load_run
from edgedd.host.augment import device_views, eval_box, normalize, render_views
from edgedd.host.rng import torch_generator

from .edge_path import HeldOut, edge_inputs, edge_top1, expectations, features, heldout_real, onnx_features
from .mobile import ORT_CONFIG_FILE, static_batch, to_ort
from .onnx_graphs import (
    INT8_MODE,
    OPSET,
    PARITY_BATCHES,
    calibration_count,
    check,
    cpu_copy,
    export_backbone,
    linear_graph,
    parity,
    quantize_int8,
)
from .projector import train_projector

# What pack writes into a bundle (and deploy-check adds): --overwrite may replace a directory
# holding only these, so it can never delete a user's own files.
BUNDLE_FILES = {
    art.ARTIFACT_FILE,
    "backbone.onnx",
    "projector.onnx",
    "classifier.onnx",
    "backbone.int8.onnx",
    "backbone.static.onnx",
    "backbone.int8.static.onnx",
    "backbone.ort",
    "projector.ort",
    "classifier.ort",
    "backbone.int8.ort",
    "backbone.static.ort",
    "backbone.int8.static.ort",
    ORT_CONFIG_FILE,
    "backbone.tflite",
    "backbone.int8.tflite",
    "projector.tflite",
    "classifier.tflite",
} | device_files()


def _is_artifact(path: Path) -> bool:
    """Header-only check: a safetensors header carrying the edgedd format tag (docs/ARTIFACT.md)."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > art.MAX_HEADER:
                return False
            md = json.loads(f.read(n)).get("__metadata__")
        return isinstance(md, dict) and "edgedd.format" in md
    except (OSError, ValueError, struct.error, AttributeError):
        return False


def _check_out(out: Path, overwrite: bool) -> None:
    check_replaceable(out, overwrite, f"--out {out}", "pass a directory path for the bundle", "--out", _not_a_bundle)


def _not_a_bundle(out: Path) -> tuple[str, str] | None:
    """Why --overwrite must not replace the non-empty ``out`` (None: it holds a bundle and nothing else)."""
    if not _is_artifact(out / art.ARTIFACT_FILE):
        return (
            f"--out {out} is not empty and holds no edgedd bundle (no {art.ARTIFACT_FILE}), so --overwrite will not "
            "replace it",
            "choose another --out, or empty that directory yourself",
        )
    foreign = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in BUNDLE_FILES and not (p.name.startswith(".") and p.name.endswith(".tmp"))
    )
    if foreign:
        return (
            f"--out {out} holds a bundle plus other files ({', '.join(foreign[:3])}), so --overwrite will not "
            "replace it",
            "move those files out, or choose another --out",
        )
    return None


def pack(
    run_dir: str | Path,
    out: str | Path,
    edge_backbone: str | None = None,
    edge_weights: str | None = None,
    edge_crop_res: int | None = None,
    config: PackConfig = PackConfig(),
    device: str = "auto",
    overwrite: bool = False,
) -> dict:
    run_dir, out = Path(run_dir), real_out(out)  # --out a symlink: the bundle it points to is replaced
    if not (config.views >= 1 and 0 < config.view_crop_min <= 1):
        raise EdgeddError(
            f"pack needs views >= 1 and 0 < view_crop_min <= 1 (got {config.views}, {config.view_crop_min})",
            "pass e.g. --views 8 --view-crop-min 0.5",
        )
    _check_out(out, overwrite)  # before any model work, so a refusal costs nothing
    run = load_run(run_dir)
    data = (run.summary.get("dataset") or {}).get("name")
    if isinstance(data, str):  # a bundle inside the training data would be scanned as one of its classes
        refuse_overlap(out, "--out", data, "the run's training data")
    # One pack per bundle at a time, for the whole command. The lock file is a sibling of the
    # bundle (.NAME.edgedd.lock, beside pack's .NAME.<pid>.tmp-* directories), not inside it:
    # the bundle directory itself is replaced by a rename at the end.
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeddError(
            f"cannot create the parent of --out {out} ({e.strerror or type(e).__name__})", "choose a writable location"
        ) from None
    with lock(out.parent / f".{out.name}.edgedd.lock", f"--out {out}"):
        _check_out(out, overwrite)  # again, now that no other pack can change it
        return _pack(run, out, edge_backbone, edge_weights, edge_crop_res, config, device, overwrite)


def _pack(
    run, out: Path, edge_backbone, edge_weights, edge_crop_res, config: PackConfig, device: str, overwrite: bool
) -> dict:
    images, labels = run.images, run.labels
    dev = resolve_device(device)
    model_a, info_a, model_b, info_b = _load_backbones(
        run, edge_backbone, edge_weights, edge_crop_res, config.seed, dev
    )

    # pixels as the device will see them
    pix_u8 = torch.round(images.clamp(0, 1) * 255).to(torch.uint8)
    pix = pix_u8.float().div(255).to(dev)
    n, c = len(labels), run.golden_weight.shape[0]
    views, targets, feats_b, calib = _render_targets(pix, model_a, info_a, model_b, info_b, config, dev)
    w_c, b_c = run.golden_weight.float(), run.golden_bias.float()
    real, missing = heldout_real(run, model_b, info_b, config.expect_images)
    w_p, b_p, ref = _fit_projector(pix, labels, targets, feats_b, model_b, info_a, info_b, w_c, b_c, config, real)
    ref.update(expectations(run, real, missing, w_p, b_p, w_c, b_c))
    heldout = None if real is None else (real.source, real.idx)
    graphs, validation, model_b_cpu = _export_graphs(model_b, info_a, info_b, w_p, b_p, w_c, b_c)
    st_in, st_f, st_l = _selftest(pix, model_b_cpu, info_b, w_p, b_p, w_c, b_c, config.selftest_images, dev)
    if config.int8:
        graphs["backbone_int8"] = (
            "backbone.int8.onnx",
            _int8_gate(graphs["backbone"][1], calib, pix, labels, info_b, w_p, b_p, w_c, b_c, ref, config, heldout),
        )
    mobile = _mobile_graphs(graphs, validation, model_b_cpu, info_b, config)
    if config.litert:
        lite = _litert_graphs(model_b_cpu, info_b, w_p, b_p, w_c, b_c, calib, config)
        mobile["meta"]["litert"] = lite.pop("litert:meta")[1]
        mobile["files"].update(lite)

    d_a = targets.shape[1]
    tensors = {
        "synthetic.images": pix_u8.cpu().numpy(),
        "synthetic.labels": labels.numpy().astype(np.int64),
        "classifier.weight": w_c.numpy(),
        "classifier.bias": b_c.numpy(),
        "projector.weight": w_p.numpy(),
        "projector.bias": b_p.numpy(),
        "targets.features": targets.cpu().view(n, config.views, d_a).numpy(),
        "targets.boxes": views.boxes.cpu().view(n, config.views, 4).numpy(),
        "targets.flips": views.flips.cpu().view(n, config.views).numpy().astype(np.uint8),
        "selftest.inputs": st_in.numpy(),
        "selftest.features": st_f.numpy(),
        "selftest.logits": st_l.numpy(),
    }
    meta = _metadata(run, info_b, feats_b.shape[1], graphs, validation, config, ref, calib, len(feats_b))
    meta["onnx"]["backbone_static"]["mobile"] = mobile.pop("readiness")
    for role in ("backbone_static", "backbone_int8_static"):
        if role in meta["onnx"]:
            meta["onnx"][role]["batch"] = config.static_batch
    meta.update(mobile.pop("meta"))
    _write_bundle(out, overwrite, graphs | mobile["files"], tensors, meta)
    return {
        "bundle": str(out),
        "artifact_sha256": sha256_file(out / art.ARTIFACT_FILE),
        "files": {f: (out / f).stat().st_size for f, _ in (graphs | mobile["files"]).values()}
        | {art.ARTIFACT_FILE: (out / art.ARTIFACT_FILE).stat().st_size},
        "mobile_readiness": meta["onnx"]["backbone_static"]["mobile"],
        "distill_backbone": info_a.name,
        "edge_backbone": info_b.name,
        "synthetic_images": n,
        "classes": c,
        "views": config.views,
        "validation": validation,
        "reference": ref,
    }


def _load_backbones(run, edge_backbone, edge_weights, edge_crop_res, seed: int, dev):
    """Distillation backbone A exactly as distilled (weights hash checked) and edge backbone B;
    B *is* A (the same objects) when unchanged. Returns model_a, info_a, model_b, info_b."""
    a_info = run.backbone
    a_pp = a_info["preprocess"]
    model_a, info_a = run.load_backbone(dev)
    same = edge_backbone is None or (
        edge_backbone == info_a.name
        and edge_weights in (None, a_info["weights"])
        and edge_crop_res in (None, a_pp["input_size"])
    )
    if same:
        model_b, info_b = model_a, info_a
    else:
        model_b, info_b = load_backbone(
            edge_backbone, edge_weights or "hub", input_size=edge_crop_res, device=dev, seed=seed
        )
    return model_a, info_a, model_b, info_b


def _render_targets(
    pix: torch.Tensor, model_a, info_a: BackboneInfo, model_b, info_b: BackboneInfo, config: PackConfig, dev
):
    """K views per image: boxes + flips, targets phi_A, inputs phi_B; with --int8 also the
    calibration inputs. Returns views, targets (n K, D_A), feats_b (n K, D_B), calib (or None)."""
    n = pix.shape[0]
    gen = torch_generator(config.seed, device=dev)  # pack's own main stream
    # view 0: the crop the device applies P to, B's eval view (B's resize and input size); targets phi_A of it
    pp = info_b.preprocess
    views = device_views(n, config.views, eval_box(pp.resize_size, pp.input_size), config.view_crop_min, gen)
    rep = pix.repeat_interleave(config.views, dim=0)
    targets = features(model_a, render_views(rep, views, info_a.preprocess.input_size), info_a)
    x_b = render_views(rep, views, info_b.preprocess.input_size)
    feats_b = features(model_b, x_b, info_b)
    calib = None
    if config.int8:  # calibrate int8 on these very inputs: evenly spaced views, normalised as the graph's input
        pick = torch.from_numpy(
            np.linspace(0, len(x_b) - 1, min(len(x_b), calibration_count(x_b.shape[-1]))).round().astype(np.int64)
        )
        calib = normalize(x_b[pick.to(x_b.device)], info_b.preprocess.mean, info_b.preprocess.std).cpu().numpy()
    del x_b
    return views, targets, feats_b, calib


def _fit_projector(
    pix: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    feats_b: torch.Tensor,
    model_b,
    info_a: BackboneInfo,
    info_b: BackboneInfo,
    w_c,
    b_c,
    config: PackConfig,
    real: HeldOut | None = None,
):
    """The packed projector P: D_B -> D_A and the reference figures on the synthetic set (the
    artifact's ``reference``, before the expectations). Its strength (edgedd.device.ridge.choose_strength):
    the one whose fit classifies the held-out real images ``real`` best, recorded for the device as
    ``device_ridge``; without at least MIN_RIDGE_IMAGES of them (or with ``config.ridge_on_heldout``
    off) the views' own cross-validation, which the device then repeats.
    Returns w_p, b_p, reference."""
    n = pix.shape[0]
    d_a, d_b = targets.shape[1], feats_b.shape[1]
    # what the fit shrinks towards: I when B has A's weights (int8 or another resolution of the same
    # network), else 0; and the strength the device's fit would pick on these views (edgedd.device.ridge)
    prior = projector_prior(info_a.weights_sha256, info_b.weights_sha256, d_a, d_b)
    held = (real.feats.numpy(), real.labels.numpy()) if real is not None and config.ridge_on_heldout else None
    choice = choose_strength(
        feats_b.cpu().numpy(),
        targets.cpu().numpy(),
        np.repeat(np.arange(n), config.views),
        labels.numpy(),
        w_c.cpu().numpy(),
        b_c.cpu().numpy(),
        held,
        prior,
    )
    ridge = choice.ridge
    on_real = {
        "device_ridge": choice.ridge if choice.heldout is not None else None,
        # {"ce", "top1"} per strength
        "device_ridge_heldout": None if choice.heldout is None else {repr(r): v for r, v in choice.heldout.items()},
        "device_ridge_images": choice.images or None,
    }
    w_p, b_p, projector_fit = train_projector(
        feats_b.cpu().view(n, config.views, d_b),
        targets.cpu().view(n, config.views, d_a),
        config.projector_epochs,
        config.seed,
        config.projector_recipe,
        ridge,
        prior,
    )

    # reference figures on the synthetic set: torch projector vs the device's closed-form fit
    eval_b = features(model_b, edge_inputs(pix, info_b), info_b).cpu()
    w_r, b_r = fit_projector_ridge(feats_b.cpu().numpy(), targets.cpu().numpy(), ridge, prior)
    logits_t = (eval_b @ w_p.T + b_p) @ w_c.T + b_c
    logits_r = (eval_b.numpy() @ w_r.T + b_r) @ w_c.numpy().T + b_c.numpy()
    ref = {
        "synthetic_top1": float((logits_t.argmax(1) == labels).float().mean()),
        "synthetic_top1_ridge": float((logits_r.argmax(1) == labels.numpy()).mean()),
        "projector_mse_torch": float(((feats_b.cpu() @ w_p.T + b_p - targets.cpu()) ** 2).mean()),
        "projector_fit": {"recipe": config.projector_recipe, **projector_fit},
        "projector_ridge": ridge,
        "projector_prior": prior,
        "projector_ridge_views": choice.views,  # the views' own cross-validation's choice
        "projector_ridge_cv": {repr(r): v for r, v in choice.views_scores.items()},  # held-out target MSE per strength
        **on_real,
        "projector_mse_ridge": float(((feats_b.cpu().numpy() @ w_r.T + b_r - targets.cpu().numpy()) ** 2).mean()),
    }
    return w_p, b_p, ref


def _export_graphs(model_b, info_a: BackboneInfo, info_b: BackboneInfo, w_p, b_p, w_c, b_c):
    """The three ONNX graphs, each checked and compared with its torch counterpart.
    Returns graphs (role -> (file, bytes)), validation (role -> parity) and the CPU copy of B."""
    d_a, d_b = w_p.shape
    pp_b = to_dict(info_b.preprocess)
    common = {"version": __version__, "opset": str(OPSET)}
    bb = export_backbone(
        model_b,
        info_b.preprocess.input_size,
        dict(common, role="backbone", model=info_b.name, weights_sha256=info_b.weights_sha256, preprocess=pp_b),
    )
    pj = linear_graph(
        w_p.numpy(),
        b_p.numpy(),
        "features",
        "projected",
        dict(common, role="projector", model=f"{info_b.name}->{info_a.name}"),
    )
    cl = linear_graph(
        w_c.numpy(),
        b_c.numpy(),
        "projected",
        "logits",
        dict(common, role="classifier", model=f"golden:{info_a.name}", classes=str(w_c.shape[0])),
    )
    s = info_b.preprocess.input_size
    model_b_cpu = cpu_copy(model_b)  # ORT runs on the CPU in fp32; model_b stays on dev
    validation = {}
    for name, data, fn, shape in [
        ("backbone", bb, model_b_cpu, (3, s, s)),
        ("projector", pj, lambda x: x @ w_p.T + b_p, (d_b,)),
        ("classifier", cl, lambda x: x @ w_c.T + b_c, (d_a,)),
    ]:
        check(data, name)
        validation[name] = parity(data, fn, shape, name)
    graphs = {
        "backbone": ("backbone.onnx", bb),
        "projector": ("projector.onnx", pj),
        "classifier": ("classifier.onnx", cl),
    }
    return graphs, validation, model_b_cpu


# An int8 .ort graph against the int8 .onnx one: the .onnx runs with onnxruntime's fused int8 kernels
# (QLinearConv), the .ort as converted (QDQ pairs around float kernels; its saved runtime optimisations
# are never replayed, see docs/MOBILE.md), so each activation may round to the neighbouring step.
ORT_INT8_TOL = 0.1


def _mobile_graphs(graphs: dict, validation: dict, model_b_cpu, info_b: BackboneInfo, config: PackConfig) -> dict:
    """The fixed-shape backbones (added to ``graphs``, their parity to ``validation``), onnxruntime's
    mobile-readiness figures for the fp32 one, and with --ort the ORT-format files (every graph,
    each parity-checked against torch as its .onnx was) and the required-operators config.
    Returns {"readiness", "meta": artifact metadata beyond "onnx", "files": role -> (file, bytes)}."""
    from edgedd.device.mobile import readiness

    s, n = info_b.preprocess.input_size, config.static_batch
    fp32 = static_batch(graphs["backbone"][1], n)
    check(fp32, "static backbone")
    validation["backbone_static"] = parity(fp32, model_b_cpu, (3, s, s), "static backbone", batches=(n,))
    graphs["backbone_static"] = ("backbone.static.onnx", fp32)
    if (
        "backbone_int8" in graphs
    ):  # int8 is not within 1e-3 of torch: the static copy must match the dynamic int8 graph instead
        q = static_batch(graphs["backbone_int8"][1], n)
        check(q, "static int8 backbone")
        validation["backbone_int8_static"] = parity(
            q, _onnx_fn(graphs["backbone_int8"][1]), (3, s, s), "static int8 backbone", batches=(n,)
        )
        graphs["backbone_int8_static"] = ("backbone.int8.static.onnx", q)
    out = {"readiness": readiness(fp32), "meta": {}, "files": {}}
    if not out["readiness"].get("available"):
        raise EdgeddError(
            f"onnxruntime's mobile checker is not usable here ({out['readiness']['reason']})",
            "install the host requirements (onnx)",
        )
    if config.ort:
        ort_files, ort_config = to_ort({f: d for f, d in graphs.values()})
        entries = {}
        for role, (f, _) in graphs.items():
            name = f[: -len(".onnx")] + ".ort"
            entries[role] = {
                "file": name,
                "sha256": hashlib.sha256(ort_files[name]).hexdigest(),
                "onnx": f,
                **({"batch": n} if role.endswith("_static") else {}),
                "parity": parity(
                    ort_files[name],
                    model_b_cpu if role in ("backbone", "backbone_static") else _onnx_fn(graphs[role][1]),
                    _input_shape(graphs[role][1]),
                    f"{name} (ORT format)",
                    batches=(n,) if role.endswith("_static") else PARITY_BATCHES,
                    tol=ORT_INT8_TOL if "int8" in role else 1e-4,
                ),
            }
            out["files"][f"ort:{role}"] = (name, ort_files[name])
        out["files"]["ort:config"] = (ORT_CONFIG_FILE, ort_config)
        out["meta"]["ort"] = {
            "graphs": entries,
            "required_operators": {"file": ORT_CONFIG_FILE, "sha256": hashlib.sha256(ort_config).hexdigest()},
            "optimization_style": "runtime",
            "target_platform": "arm",
        }
    return out


def _litert_graphs(model_b_cpu, info_b: BackboneInfo, w_p, b_p, w_c, b_c, calib, config: PackConfig) -> dict:
    """pack --litert: backbone (and with --int8 its int8 twin), projector and classifier as .tflite
    at the fixed batch, each checked against torch with LiteRT's interpreter (export/litert.py).
    Returns role -> (file, bytes), plus "litert:meta" -> (None, the artifact's litert section)."""
    from . import litert

    s, n = info_b.preprocess.input_size, config.static_batch
    g = torch_generator("litert-parity", config.seed)
    x = torch.randn(n, 3, s, s, generator=g)
    pj, cl = torch.nn.Linear(*reversed(w_p.shape)), torch.nn.Linear(*reversed(w_c.shape))
    with torch.no_grad():
        pj.weight.copy_(w_p), pj.bias.copy_(b_p), cl.weight.copy_(w_c), cl.bias.copy_(b_c)
    made = {
        "backbone": ("backbone.tflite", litert.convert(model_b_cpu, x, "backbone"), model_b_cpu, x, 1e-3),
        "projector": (
            "projector.tflite",
            litert.convert(pj, torch.randn(n, w_p.shape[1], generator=g), "projector"),
            pj,
            None,
            1e-3,
        ),
        "classifier": (
            "classifier.tflite",
            litert.convert(cl, torch.randn(n, w_c.shape[1], generator=g), "classifier"),
            cl,
            None,
            1e-3,
        ),
    }
    skipped = None
    if (
        config.int8 and calib is not None
    ):  # where LiteRT's quantiser takes the backbone; else recorded, the rest still ships
        try:
            made["backbone_int8"] = (
                "backbone.int8.tflite",
                litert.convert_int8(model_b_cpu, x, calib, "backbone"),
                model_b_cpu,
                x,
                None,
            )
        except EdgeddError as e:
            skipped = e.problem
    out, entries = {}, {}
    for role, (f, data, fn, sample, tol) in made.items():
        sample = sample if sample is not None else torch.randn(n, fn.in_features, generator=g)
        entries[role] = {
            "file": f,
            "sha256": hashlib.sha256(data).hexdigest(),
            "batch": n,
            "parity": litert.parity(data, fn, sample, f, tol),
        }
        out[f"litert:{role}"] = (f, data)
    out["litert:meta"] = (
        None,
        {
            "graphs": entries,
            "converter": f"litert-torch {litert.version()}",
            **({"int8_skipped": skipped} if skipped else {}),
        },
    )
    return out


def _onnx_fn(data: bytes):
    """A graph as a torch-in, torch-out function (onnxruntime, CPU): the reference a derived graph is checked
    against.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _input_shape(data: bytes) -> tuple[int, ...]:
    """A graph's input shape without the batch axis."""
    import onnxruntime as ort

    return tuple(ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_inputs()[0].shape[1:])


def _selftest(pix: torch.Tensor, model_b_cpu, info_b: BackboneInfo, w_p, b_p, w_c, b_c, count: int, dev):
    """Self-test: torch outputs for ``count`` evenly spaced synthetic images through the whole edge
    pipeline. Returns the normalised inputs, the features and the logits."""
    n = pix.shape[0]
    k = min(count, n)
    pick = torch.linspace(0, n - 1, k).round().long()
    st_in = normalize(edge_inputs(pix[pick.to(dev)], info_b), info_b.preprocess.mean, info_b.preprocess.std).cpu()
    with torch.no_grad():
        st_f = model_b_cpu(st_in).float()
    st_l = (st_f @ w_p.T + b_p) @ w_c.T + b_c
    return st_in, st_f, st_l


def _int8_gate(
    bb: bytes,
    calib: np.ndarray,
    pix: torch.Tensor,
    labels: torch.Tensor,
    info_b: BackboneInfo,
    w_p,
    b_p,
    w_c,
    b_c,
    ref: dict,
    config: PackConfig,
    heldout: tuple | None = None,
) -> bytes:
    """The int8 backbone, refused when its top-1 through the packed projector drops by more than
    ``int8_max_drop``: on the real held-out images the fp32 expectation was measured on
    (``heldout``, recorded as ``int8_expected_edge_top1``), or, without them, on the synthetic set.
    Records the synthetic-set figure in ``ref`` either way. Returns the quantised graph.

    Why real images first: the optimised synthetic images are where int8 is least faithful (feature
    cosine to fp32 0.93-0.97 on their views, 0.96-0.99 on real digits), so the synthetic set
    overstates what int8 costs on the images a device classifies: EfficientNet-Lite1 at 64 px lost
    7.0 points on it and 0.9 on real test digits (bench/RESULTS.md, "The int8 device fit").
    """
    import onnxruntime as ort

    q = quantize_int8(bb, calib)
    check(q, "int8 backbone")
    sess = ort.InferenceSession(q, providers=["CPUExecutionProvider"])
    xe = normalize(edge_inputs(pix, info_b), info_b.preprocess.mean, info_b.preprocess.std).cpu()
    fq = onnx_features(sess, xe).numpy()
    top_q = float(
        (((fq @ w_p.numpy().T + b_p.numpy()) @ w_c.numpy().T + b_c.numpy()).argmax(1) == labels.numpy()).mean()
    )
    ref["int8_synthetic_top1_packed_projector"] = top_q
    top_r, seen = (
        edge_top1(*heldout, None, info_b, w_p, b_p, w_c, b_c, session=sess) if heldout is not None else (None, 0)
    )
    if seen:  # none readable any more (the files went away since the fp32 pass): the synthetic set decides
        ref.update(int8_expected_edge_top1=top_r, int8_expected_edge_images=seen)
        before, after, on = ref["expected_edge_top1"], top_r, f"top-1 on {seen} held-out real images"
    else:
        before, after, on = ref["synthetic_top1"], top_q, "synthetic-set top-1"
    if before - after > config.int8_max_drop:
        raise EdgeddError(
            f"the int8 backbone loses {100 * (before - after):.1f} points of {on} ({100 * before:.1f}% -> "
            f"{100 * after:.1f}%), "
            f"more than {100 * config.int8_max_drop:.1f}",
            "ship fp32 (drop --int8) or raise --int8-max-drop",
        )
    return q


def _metadata(
    run,
    info_b: BackboneInfo,
    d_b: int,
    graphs: dict,
    validation: dict,
    config: PackConfig,
    ref: dict,
    calib,
    views_total: int,
) -> dict:
    """The artifact's metadata (docs/ARTIFACT.md)."""
    meta = {
        "edgedd": __version__,
        "class_names": run.class_names,
        "distill": {"backbone": run.backbone, "config": run.config, "run_fingerprint": run.identity.get("fingerprint")},
        "edge": {"backbone": info_b.to_dict(), "preprocess": to_dict(info_b.preprocess), "features": d_b},
        "onnx": {
            role: {
                "file": f,
                "sha256": hashlib.sha256(d).hexdigest(),
                "opset": OPSET,
                **({"parity": validation[role]} if role in validation else {}),
            }
            for role, (f, d) in graphs.items()
        },
        "pack": to_dict(config),
        "reference": ref,
        "views": {"augment": to_dict(device_view_augment(config.view_crop_min)), "centre_first": True, "noise": False},
    }
    cr = _copy_ratio(run)
    if cr is not None:  # format 1.5: how close the shipped images are to training images
        meta["copy_ratio"] = cr
    if config.int8:
        meta["onnx"]["backbone_int8"]["quantization"] = {
            "mode": INT8_MODE,
            "calibration_inputs": len(calib),
            "calibration_data": f"synthetic views, evenly spaced of {views_total}",
        }
    return meta


def _copy_ratio(run) -> dict | None:
    """The run's copy ratio without the per-image list, or None when summary.json has none (older
    runs) or one the artifact schema would refuse (an edited summary: the bundle ships without it)."""
    cr = run.summary.get("copy_ratio")
    if not isinstance(cr, dict) or not isinstance(cr.get("spaces"), dict):
        return None
    out = {
        **cr,
        "spaces": {
            k: ({kk: vv for kk, vv in v.items() if kk != "ratios"} if isinstance(v, dict) else v)
            for k, v in cr["spaces"].items()
        },
    }
    return out if copy_ratio_problem(out, len(run.labels)) is None else None


def _write_bundle(out: Path, overwrite: bool, graphs: dict, tensors: dict, meta: dict) -> None:
    """Write the bundle atomically: a temporary sibling, then rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(out.parent, out.name)  # left by a pack that was killed
    _check_out(out, overwrite)  # again: the directory may have changed during the model work
    tmp = make_temp_dir(out.parent, out.name)
    try:
        for f, d in graphs.values():
            write_bytes(tmp / f, d)
        art.write(tmp / art.ARTIFACT_FILE, tensors, meta)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
