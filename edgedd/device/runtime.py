"""Device runtime: verify a bundle, fine-tune its projector, classify. numpy + onnxruntime only.

The public face of the device side; each idea lives in its own module, read in this order:

    bundle     Bundle, open_bundle: the artifact and every graph verified, the sessions open
    inputs     images -> normalised edge inputs (``edgedd predict``'s preprocessing)
    infer      edge inputs -> backbone features -> logits -> probabilities
    finetune   the projector fitted on this device (the math), and its sidecar file
    accuracy   top-1 on a labelled folder; chance and the host's expected top-1
    sidecar    the files the device writes beside a bundle, one set per backbone variant
    latency    batch-1 latency, and the intra-op thread count deploy-check chooses
    checks     deploy_check: every check of ``edgedd deploy-check``, one step each
    predict    what ``edgedd predict`` and ``edgedd inspect`` answer
"""

from __future__ import annotations

from .accuracy import CHANCE_ALPHA, EXPECTED_MARGIN, LabelledFolder, allowed_drop, chance_bound, load_labelled_folder, top1
from .bundle import ROLES, Bundle, open_bundle
from .graphs import read_graph
from .checks import SYNTHETIC_SLACK, deploy_check, peak_rss_mb
from .finetune import (FINETUNED_FILE, fine_tune_projector, fit_projector_ridge, load_finetuned, projector_problem, save_finetuned,
                       synthetic_pixels, view_inputs)
from .infer import BATCH, backbone_features, classify, head, run_checked, softmax, top_indices
from .latency import choose_threads, latency_ms, thread_counts
from .sidecar import KINDS, VARIANTS, settings_path, sidecar_path
from .inputs import as_image_list, edge_canvas, is_image_list, prepare_canvases
from .predict import inspect, predict, predict_files

__all__ = [
    "Bundle", "open_bundle", "read_graph", "ROLES",
    "as_image_list", "edge_canvas", "is_image_list", "prepare_canvases",
    "BATCH", "backbone_features", "classify", "head", "run_checked", "softmax", "top_indices",
    "KINDS", "settings_path", "sidecar_path", "choose_threads", "thread_counts", "LabelledFolder",
    "FINETUNED_FILE", "VARIANTS", "fine_tune_projector", "fit_projector_ridge", "load_finetuned", "projector_problem",
    "save_finetuned", "synthetic_pixels", "view_inputs",
    "CHANCE_ALPHA", "EXPECTED_MARGIN", "allowed_drop", "chance_bound", "load_labelled_folder", "top1",
    "SYNTHETIC_SLACK", "deploy_check", "latency_ms", "peak_rss_mb",
    "inspect", "predict", "predict_files",
]
