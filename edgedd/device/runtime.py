"""Device runtime: verify a bundle, fine-tune its projector, classify. numpy + onnxruntime only.

Inference (Classifier Inheritance, METHOD.md Stage III):

    logits = classifier( P( phi_B(x) ) ),   P(f) = W f + b  (D_B -> D_A)

phi_B is the edge backbone's ONNX graph; the classifier is the golden full-data classifier
inherited from the host. Fine-tuning P needs no host backbone: the artifact stores phi_A features
of K augmented views of every synthetic image (the *targets*) and the view boxes, so the device
renders the same views, runs phi_B on them and solves the ridge regression in closed form:

    [W; b] = argmin ||X W^T + 1 b^T - Y||^2 + lam ||W||^2
    W^T = (Xc^T Xc + lam I)^-1 Xc^T Yc,  b = mean(Y) - W mean(X),   Xc, Yc centred      (3)

with lam = ridge * trace(Xc^T Xc) / D_B (scale-free).
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from ..atomic import write_bytes
from ..errors import EdgeddError
from ..images import EMBEDDED_PREFIX, UNREADABLE_IMAGE, load_canvas, resize_center_crop, scan_image_folder, to_rgb
from ..paths import PERMISSION_FIX, NotRegularFile, require_dir, require_file
from . import artifact as art
from .onnx_scan import Malformed, uses_external_data
from .ortrun import run as run_graph
from .render import center_crop, normalize, render_views, resize_square
from .ridge import fit_ridge as fit_projector_ridge, mse, objective, select_ridge

try:  # Unix only; peak RSS is then not reported
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None

FINETUNED_FILE = "projector.finetuned.safetensors"
ROLES = ("backbone", "projector", "classifier")
VARIANTS = ("fp32", "int8")  # the backbone graphs a bundle can hold ("int8" only if packed with --int8)
SYNTHETIC_SLACK = 0.05  # device vs host top-1 on the synthetic set, same projector (at least one image)

# A graph's file name must be a bare name inside the bundle: one rule, the schema's (checked on
# every read of the artifact; read_graph checks it again before touching the file system).
from .schema import GRAPH_NAME  # noqa: E402



@dataclass
class Bundle:
    """A verified bundle with its onnxruntime sessions open: the device side's Python API.

    ``Bundle.open(path)`` verifies the bundle once (artifact hash, every graph's sha256, no
    external data; :func:`open_bundle`) and loads the device-fitted projector when deploy-check
    wrote a valid one for this artifact and this backbone variant (:func:`load_finetuned`);
    ``predict`` then reuses the sessions, so a camera loop pays for neither again::

        b = Bundle.open("bundles/mnist")
        b.predict(frame, top_k=3)       # [(label, prob), ...] for one image
        b.predict([a, b2, "x.png"])     # one such list per image

    Images: a file path, a PIL image, an (H, W, 3) uint8 RGB array, or a list of those (an
    (N, H, W, 3) uint8 array is a list too). Preprocessing is ``edgedd predict``'s, byte for byte:
    RGB (alpha over black), shorter side to the canvas, centre crop, normalise.
    """

    directory: Path
    artifact: art.Artifact
    sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)
    providers: list[str] = field(default_factory=list)
    variant: str = "fp32"  # which backbone the sessions run: "fp32" or "int8"
    graph_sha256: dict[str, str] = field(default_factory=dict)
    graph_files: dict[str, Path] = field(default_factory=dict)  # role -> the file each session was loaded from (for errors)
    # The device-fitted projector (W, b) that Bundle.open found for this variant; None: the packed projector graph.
    projector: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def open(cls, directory: str | Path, int8: bool = False, providers: list[str] | None = None) -> Bundle:
        """Verify the bundle, open its sessions (``int8``: the int8 backbone) and load the fitted projector.

        Raises EdgeddError (one line with the fix) for a bundle that does not verify, a missing
        int8 backbone, or a fitted projector that is damaged or was fitted on the other variant.
        """
        b = open_bundle(directory, int8=int8, providers=providers)
        b.projector = load_finetuned(b)
        return b

    @property
    def meta(self) -> dict:
        return self.artifact.meta

    @property
    def edge_preprocess(self) -> dict:
        return self.meta["edge"]["preprocess"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def classes(self) -> list[str]:
        """Class names in label order (a copy)."""
        return list(self.class_names)

    def inputs(self, images) -> np.ndarray:
        """Images (one or a list, see the class docstring) -> normalised (n, 3, S, S) edge inputs."""
        pp = self.edge_preprocess
        canvases = [edge_canvas(im, pp["resize_size"], pp["interpolation"]) for im in as_image_list(images)]
        if not canvases:
            return np.zeros((0, 3, pp["input_size"], pp["input_size"]), np.float32)
        x = np.stack(canvases).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        return normalize(center_crop(x, pp["input_size"]), pp["mean"], pp["std"])

    def probabilities(self, images) -> np.ndarray:
        """Softmax class probabilities, (n, classes) float32, for one image or a list."""
        x = self.inputs(images)
        if not len(x):
            return np.zeros((0, len(self.class_names)), np.float32)
        return softmax(classify(self, x, self.projector))

    def predict(self, images, top_k: int = 5) -> list:
        """The ``top_k`` most probable (label, prob), best first: a list for one image, a list of
        such lists for a list of images."""
        prob = self.probabilities(images)
        rows = [[(self.class_names[i], float(row[i])) for i in top_indices(row, top_k)] for row in prob]
        return rows if is_image_list(images) else rows[0]


def read_graph(directory: Path, role: str, entry) -> bytes:
    """The verified bytes of one graph: bare name checked first, file read once, sha256 on those bytes.

    Every name that is not a bare file name gets the same message, without touching the file
    system, so a crafted artifact learns nothing about what exists outside the bundle. The file
    is opened without following a symlink and must be a regular file (a FIFO would hang).
    """
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not GRAPH_NAME.fullmatch(name):
        raise EdgeddError(f"the artifact in {directory} names its {role} graph by something other than a file name inside the bundle",
                          "the bundle was altered; re-copy it or re-run edgedd pack")
    path = directory / name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise EdgeddError(f"bundle {directory} is missing {name}", "copy the whole bundle directory") from None
    except OSError as e:  # ELOOP: a symlink, which could lead outside the bundle; EACCES; ...
        why = "a symbolic link" if e.errno == errno.ELOOP else os.strerror(e.errno) if e.errno else type(e).__name__
        raise EdgeddError(f"cannot read {path} ({why})", "graph files must be readable regular files inside the bundle; re-copy it") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise EdgeddError(f"{path} is not a regular file", "graph files must be regular files inside the bundle; re-copy it")
        data = f.read()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise EdgeddError(f"{path} does not match the artifact (sha256 mismatch)", "the bundle was altered or mixed up; re-copy it")
    return data


def open_bundle(directory: str | Path, int8: bool = False, providers: list[str] | None = None) -> Bundle:
    """Read and verify the artifact, check every ONNX file's sha256, open the sessions.

    A bundle is a closed world: each graph is read once, hashed, and the *same bytes* go to
    onnxruntime (never re-opened by path, so swapping a file afterwards changes nothing), and a
    graph whose tensors live in external files is refused (see onnx_scan).
    """
    directory = require_dir(directory, "bundle", "pass the --out directory of edgedd pack")
    a = art.read(require_file(directory / art.ARTIFACT_FILE, "artifact", "pass a bundle directory made by edgedd pack"))
    graphs = a.meta.get("onnx")
    graphs = dict(graphs) if isinstance(graphs, dict) else {}
    if int8:
        if "backbone_int8" not in graphs:
            raise EdgeddError(f"bundle {directory} has no int8 backbone", "re-pack it on the host with edgedd pack --int8, or run without --int8")
        graphs["backbone"] = graphs["backbone_int8"]
    available = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]  # remote-only EP
    chosen = [p for p in (providers or available) if p in available] or ["CPUExecutionProvider"]
    b = Bundle(directory, a, providers=chosen, variant="int8" if int8 else "fp32")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for role in ROLES:
        g = graphs.get(role)
        if not g:
            raise EdgeddError(f"artifact in {directory} lists no {role} graph", "re-run edgedd pack")
        data = read_graph(directory, role, g)
        name = g["file"]
        try:
            external = uses_external_data(data)
        except Malformed:  # refused too: what this walker cannot read, it cannot vouch for
            raise EdgeddError(f"{directory / name} is not a valid ONNX model", "the bundle was altered; re-copy it or re-run edgedd pack") from None
        if external:
            raise EdgeddError(f"{directory / name} keeps tensors in external files, which a bundle never does",
                              "the bundle was altered; re-copy it or re-run edgedd pack")
        b.graph_sha256[role] = g["sha256"]
        b.graph_files[role] = directory / name
        try:
            b.sessions[role] = ort.InferenceSession(data, sess_options=opts, providers=chosen)
        except Exception as e:  # onnxruntime's own exception types
            raise EdgeddError(f"onnxruntime cannot load {directory / name} ({type(e).__name__})",
                              "check the onnxruntime version (see the bundle's meta)") from None
    return b


def _run(b: Bundle, role: str, x: np.ndarray) -> np.ndarray:
    """One batch through one graph, under the time limit (ortrun)."""
    sess = b.sessions[role]
    feeds = {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    return run_graph(sess, feeds, f"the {role} graph {b.graph_files.get(role, '')}".rstrip())[0]


def backbone_features(b: Bundle, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """images: normalised (n, 3, S, S) float32 at the edge input size."""
    return np.concatenate([_run(b, "backbone", images[s : s + batch]) for s in range(0, len(images), batch)])


def prepare_canvases(b: Bundle, canvases: np.ndarray) -> np.ndarray:
    """(n, 3, R, R) pixels in [0, 1] -> edge input: resize to resize_size, centre crop, normalise."""
    pp = b.edge_preprocess
    x = canvases if canvases.shape[-1] == pp["resize_size"] else resize_square(canvases, pp["resize_size"])
    return normalize(center_crop(x, pp["input_size"]), pp["mean"], pp["std"])


def synthetic_pixels(b: Bundle) -> np.ndarray:
    return b.artifact["synthetic.images"].astype(np.float32) / 255.0


def view_inputs(b: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """Render the stored views at the edge input size: (N*K, 3, S, S) inputs, (N*K, D_A) targets."""
    pix = synthetic_pixels(b)
    boxes, flips, targets = b.artifact["targets.boxes"], b.artifact["targets.flips"], b.artifact["targets.features"]
    n, k = boxes.shape[:2]
    pp = b.edge_preprocess
    views = render_views(np.repeat(pix, k, axis=0), boxes.reshape(n * k, 4), flips.reshape(n * k).astype(bool), pp["input_size"])
    return normalize(views, pp["mean"], pp["std"]), targets.reshape(n * k, -1)


def fine_tune_projector(b: Bundle, ridge: float | None = None) -> dict:
    """Fit the projector on this device's phi_B of the stored views (edgedd.device.ridge): at the
    relative strength ``ridge``, or, with None, the one grouped cross-validation on the synthetic
    images picks (what generalises from this bundle's images to unseen ones through *this* B)."""
    x_in, y = view_inputs(b)
    feats = backbone_features(b, x_in)
    n, k = b.artifact["targets.boxes"].shape[:2]
    prior = b.meta.get("reference", {}).get("projector_prior", "none")  # format < 1.2: none
    scores = {}
    if ridge is None:
        ridge, scores = select_ridge(feats, y, np.repeat(np.arange(n), k), b.artifact["synthetic.labels"], prior=prior)
    w, bias = fit_projector_ridge(feats, y, ridge, prior)
    w0, b0 = b.artifact["projector.weight"], b.artifact["projector.bias"]
    return {"weight": w, "bias": bias, "views": len(y), "mse_before": mse(feats, y, w0, b0), "mse_after": mse(feats, y, w, bias),
            "objective_before": objective(feats, y, w0, ridge, prior), "objective_after": objective(feats, y, w, ridge, prior),
            "ridge": ridge, "ridge_scores": scores, "prior": prior}


def projector_problem(b: Bundle, w, bias) -> str | None:
    """Why (w, bias) cannot be this bundle's projector D_B -> D_A, or None if it can."""
    d_a, d_b = b.artifact["projector.weight"].shape
    for name, t, shape in (("weight", w, (d_a, d_b)), ("bias", bias, (d_a,))):
        if not isinstance(t, np.ndarray) or t.dtype != np.float32:
            return f"{name} is {getattr(t, 'dtype', type(t).__name__)}, not float32"
        if t.shape != shape:
            return f"{name} has shape {t.shape}, not {shape}"
        if not np.isfinite(t).all():
            return f"{name} holds NaN or infinite values"
    return None


def save_finetuned(b: Bundle, ft: dict) -> Path:
    """Write the device-fitted projector, bound to the artifact and to the backbone graph it was fitted on."""
    from ..stio import serialize as save

    meta = {"artifact_sha256": b.artifact.file_sha256, "backbone": b.variant, "backbone_sha256": b.graph_sha256["backbone"],
            "method": "ridge (closed form)", "ridge": repr(ft["ridge"]), "views": str(ft["views"]),
            "mse_before": repr(ft["mse_before"]), "mse_after": repr(ft["mse_after"])}
    path = b.directory / FINETUNED_FILE
    write_bytes(path, save({"weight": ft["weight"], "bias": ft["bias"]}, metadata=meta))
    return path


def load_finetuned(b: Bundle) -> tuple[np.ndarray, np.ndarray] | None:
    """The device-fitted projector, if one was written for *this* artifact and *this* backbone.

    Validated, not trusted: anything on disk could have written it. Raises EdgeddError naming
    what is wrong (damaged, fitted for another artifact or backbone, wrong dtype or shape, not
    finite); None if there is no such file.
    """
    from safetensors import safe_open

    path = b.directory / FINETUNED_FILE
    if not os.path.lexists(path):
        return None

    def bad(what: str) -> EdgeddError:
        return EdgeddError(f"{path} is not a valid fitted projector for this bundle ({what})",
                           "delete it and run edgedd deploy-check again" + (" --int8" if b.variant == "int8" else ""))

    if path.is_symlink() or not path.is_file():
        raise bad("not a regular file")
    d_a, d_b = b.artifact["projector.weight"].shape
    try:
        with safe_open(str(path), framework="numpy") as f:
            md = f.metadata() or {}
            if sorted(f.keys()) != ["bias", "weight"]:
                raise bad(f"tensors {sorted(f.keys())[:4]}, not bias and weight")
            for name, shape in (("weight", (d_a, d_b)), ("bias", (d_a,))):  # shape from the header, before reading data
                if tuple(f.get_slice(name).get_shape()) != shape:
                    raise bad(f"{name} has shape {tuple(f.get_slice(name).get_shape())}, not {shape}")
            w, bias = f.get_tensor("weight"), f.get_tensor("bias")
    except EdgeddError:
        raise
    except Exception:  # safetensors' own error types
        raise bad("damaged") from None
    if md.get("artifact_sha256") != b.artifact.file_sha256:
        raise bad("fitted for another artifact")
    fitted_on = md.get("backbone")
    if fitted_on in VARIANTS and fitted_on != b.variant:  # the other variant's fit: say how to get this one's
        raise EdgeddError(f"{path} is not a valid fitted projector for this bundle (fitted for the {fitted_on} backbone, this run uses {b.variant})",
                          f"run edgedd deploy-check{' --int8' if b.variant == 'int8' else ''} on this bundle to fit it for the {b.variant} "
                          f"backbone (it replaces the {fitted_on} fit), or run with{'out' if b.variant == 'int8' else ''} --int8")
    if fitted_on != b.variant:
        raise bad(f"fitted for the {fitted_on or 'unknown'} backbone, this run uses {b.variant}")
    if md.get("backbone_sha256") != b.graph_sha256["backbone"]:
        raise bad("fitted for another backbone graph")
    problem = projector_problem(b, w, bias)
    if problem:
        raise bad(problem)
    return w, bias


def classify(b: Bundle, images: np.ndarray, projector: tuple[np.ndarray, np.ndarray] | None = None, batch: int = 64) -> np.ndarray:
    """Normalised edge inputs -> logits. ``projector`` None: the packed projector graph."""
    out = []
    for s in range(0, len(images), batch):
        f = _run(b, "backbone", images[s : s + batch])
        p = _run(b, "projector", f) if projector is None else f @ projector[0].T + projector[1]
        out.append(_run(b, "classifier", p))
    return np.concatenate(out)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")


def load_labelled_folder(b: Bundle, directory: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """A local ImageFolder, preprocessed for the edge backbone; labels mapped by class name."""
    if str(directory).startswith(EMBEDDED_PREFIX):
        raise EdgeddError(f"--data {directory} is an embedded dataset, which a device cannot read (it ships with the host install)",
                          f"on the host run: edgedd export-data {directory} DIR, copy DIR to this device and pass --data DIR")
    src = scan_image_folder(require_dir(directory, "--data", "pass a local ImageFolder (one sub-folder per class, named after the bundle's "
                                        "classes); edgedd export-data on the host writes one from any dataset"), min_classes=1)
    unknown = [c for c in src.class_names if c not in b.class_names]
    if unknown:
        raise EdgeddError(f"--data class folder(s) {', '.join(unknown[:5])} are not classes of this bundle",
                          f"use folders named after the bundle's classes ({', '.join(b.class_names[:10])}…)")
    index = {c: i for i, c in enumerate(b.class_names)}
    pp = b.edge_preprocess
    xs, ys, skipped = [], [], 0
    for path, label in zip(src.paths, src.labels):
        try:
            xs.append(load_canvas(path, pp["resize_size"], pp["interpolation"]).transpose(2, 0, 1))
            ys.append(index[src.class_names[label]])
        except UNREADABLE_IMAGE:  # incl. decompression bombs and MemoryError: skipped and counted
            skipped += 1
    if not xs:
        raise EdgeddError(f"no readable images in {directory}", "pass a folder of images")
    x = np.stack(xs).astype(np.float32) / 255.0
    return normalize(center_crop(x, pp["input_size"]), pp["mean"], pp["std"]), np.asarray(ys), skipped


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB; None where the platform has no getrusage."""
    if resource is None:
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / (1024.0 * 1024.0)


def latency_ms(b: Bundle, x1: np.ndarray, projector=None, runs: int = 50, warmup: int = 5) -> tuple[float, float]:
    for _ in range(warmup):
        classify(b, x1, projector)
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        classify(b, x1, projector)
        t.append((time.perf_counter() - s) * 1000)
    return float(np.percentile(t, 50)), float(np.percentile(t, 95))


CHANCE_ALPHA = 0.00135  # one-sided tail probability of 3 sigma


def chance_bound(n: int, p: float, alpha: float = CHANCE_ALPHA) -> int | None:
    """The fewest correct answers out of ``n`` that a guesser right with probability ``p`` reaches
    with probability at most ``alpha`` (exact binomial tail, 3 sigma by default); None when even
    ``n`` of ``n`` is not that unlikely (too few images to tell a classifier from chance)."""
    if n <= 0 or p >= 1:
        return None
    if p <= 0:
        return 1

    def log_pmf(k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)

    tail = 0.0
    for k in range(n, -1, -1):
        tail += math.exp(log_pmf(k))
        if tail > alpha:
            return k + 1 if k < n else None
    return 0  # pragma: no cover - the tail reaches 1 > alpha at k = 0


EXPECTED_MARGIN = 0.05  # deploy-check --margin: a drop below the host's expected top-1 never fails under this


def allowed_drop(device_top1: float, device_n: int, host_top1: float, host_n: int, margin: float = EXPECTED_MARGIN) -> float:
    """How far the device's top-1 may fall below the host's expected top-1 before the ``expected``
    check fails: max(``margin``, 3 standard errors of the difference of the two proportions),

        se = sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2),

    each proportion Agresti-Caffo adjusted (p = (k + 1) / (n + 2), over n + 2), so that 3 of 3
    right on the host does not claim zero uncertainty and fail a device at 17 of 18."""

    def var(p: float, n: int) -> float:
        q = (p * n + 1) / (n + 2)
        return q * (1 - q) / (n + 2)

    return max(margin, 3 * math.sqrt(var(device_top1, device_n) + var(host_top1, host_n)))


def _check(checks: list, name: str, ok: bool | None, detail: str) -> bool | None:
    """Record a check: ok True passed, False failed, None skipped (could not be judged; says why)."""
    checks.append({"name": name, "ok": None if ok is None else bool(ok), "detail": detail})
    return ok


def _expected_check(checks: list, report: dict, ref: dict, n: int, margin: float, int8: bool) -> None:
    """--data top-1 against the top-1 pack measured on the same edge path on real held-out images."""
    host, host_n = ref.get("expected_edge_top1"), ref.get("expected_edge_images")
    report["expected_top1"], report["expected_images"], report["expected_allowed_drop"] = host, host_n, None
    if not isinstance(host, (int, float)) or not isinstance(host_n, int) or host_n < 1:
        why = ref.get("expected_edge_missing") or "packed by an edgedd that did not measure one"
        _check(checks, "expected", None, f"skipped: the bundle records no expected edge top-1 ({why}); re-pack on the host with the run's training data")
        return
    got = report["data_top1"]
    drop = report["expected_allowed_drop"] = allowed_drop(got, n, host, host_n, margin)
    _check(checks, "expected", got >= host - drop,
           f"device {got:.1%} on {n} images, host expected {host:.1%} on {host_n} held-out images"
           + (" (fp32 backbone)" if int8 else "") + f"; allowed drop {100 * drop:.1f} points (max of --margin {100 * margin:g} and 3 standard errors)")


def deploy_check(directory: str | Path, data: str | Path | None = None, fine_tune: bool = True, max_latency_ms: float | None = None,
                 int8: bool = False, ridge: float | None = None, tolerance: float = 1e-3, min_accuracy: float | None = None,
                 min_data_top1: float | None = None, margin: float = EXPECTED_MARGIN) -> dict:
    """Every check the issue lists; integrity and file problems raise (nothing else can run).

    With ``data``: "data accuracy" fails below ``min_accuracy`` (``min_data_top1`` is its old name)
    and "above chance" fails when top-1 is not above what guessing gets (:func:`chance_bound`);
    "expected" fails when top-1 falls more than :func:`allowed_drop` below the top-1 pack measured
    on real held-out images, and is skipped (ok None) for a bundle that records none.
    The report's ``ok`` is False when any check failed.
    """
    if min_accuracy is None:
        min_accuracy = min_data_top1
    if min_accuracy is not None and data is None:
        raise EdgeddError("a minimum accuracy needs labelled data to measure it on", "pass --data DIR with --min-accuracy")
    b = open_bundle(directory, int8=int8)
    checks: list[dict] = []
    m = b.meta
    _check(checks, "integrity", True, f"format {m['format']}, sha256 verified, {len(b.artifact.tensors)} tensors")
    _check(checks, "graphs", True, f"{', '.join(ROLES)} loaded on {', '.join(b.providers)}" + (" (int8 backbone)" if int8 else ""))

    # self-test: the packed torch outputs, reproduced by onnxruntime
    xs, want_f, want_l = b.artifact["selftest.inputs"], b.artifact["selftest.features"], b.artifact["selftest.logits"]
    got_f = backbone_features(b, xs)
    got_l = classify(b, xs)
    rel_f = float(np.abs(got_f - want_f).max() / (np.abs(want_f).max() + 1e-12))
    agree = float((got_l.argmax(1) == want_l.argmax(1)).mean())
    if int8:
        _check(checks, "self-test", agree >= 0.5, f"int8 backbone: top-1 agreement with fp32 torch {agree:.0%}, feature rel. error {rel_f:.3g}")
    else:
        _check(checks, "self-test", rel_f <= tolerance and agree == 1.0, f"feature rel. error {rel_f:.2e} (tol {tolerance:g}), top-1 agreement {agree:.0%}")

    labels = b.artifact["synthetic.labels"]
    syn_x = prepare_canvases(b, synthetic_pixels(b))
    before = top1(classify(b, syn_x), labels)
    projector = None
    if fine_tune:
        ft = fine_tune_projector(b, ridge)
        projector = (ft["weight"], ft["bias"])
        problem = projector_problem(b, *projector)
        # the closed-form fit minimises (3) at its strength: the packed projector cannot do better there
        fit_ok = problem is None and ft["objective_after"] <= ft["objective_before"] * 1.0001 + 1e-12
        # Only a fit that passes is written: predict trusts what this check let through.
        written = f"wrote {save_finetuned(b, ft).name}" if fit_ok else f"not written ({problem or 'the fit does not lower the error'})"
        _check(checks, "fine-tune", fit_ok, f"ridge {ft['ridge']:g}{' (cross-validated)' if ft['ridge_scores'] else ''} on {ft['views']} views: "
                                            f"target MSE {ft['mse_before']:.4g} -> {ft['mse_after']:.4g}; {written}")
    else:
        try:
            projector = load_finetuned(b)
        except EdgeddError as e:  # a bad sidecar must not stop the check: report it and use the packed projector
            warnings.warn(f"{e.problem}; ignored, the packed projector is used")
            _check(checks, "fine-tune", False, f"ignored: {e.problem}; using the packed projector")
        else:
            if projector is not None:
                _check(checks, "fine-tune", True, f"using {FINETUNED_FILE} (fitted on this artifact's {b.variant} backbone)")
    syn = top1(classify(b, syn_x, projector), labels)
    # Parity with the host: the device must reproduce the host's synthetic-set figure for the same
    # projector (packed: torch-trained; fine-tuned: the same closed-form fit on the same views).
    ref = m.get("reference", {})
    slack = max(SYNTHETIC_SLACK, 1.01 / len(labels))  # one image of a tiny set is not a regression
    pairs = [("packed projector", before, ref.get("int8_synthetic_top1_packed_projector" if int8 else "synthetic_top1"))]
    if fine_tune and not int8:
        pairs.append(("device fit", syn, ref.get("synthetic_top1_ridge")))
    ok = all(r is None or abs(got - r) <= slack for _, got, r in pairs)
    detail = "; ".join(f"{name} {got:.1%}" + (f" (host {r:.1%})" if r is not None else "") for name, got, r in pairs)
    if fine_tune and int8:
        detail += f"; device fit on int8 features {syn:.1%}"
    _check(checks, "synthetic accuracy", ok, detail + f"; parity within {slack:.0%}")

    report = {"ok": True, "checks": checks, "synthetic_top1": syn, "synthetic_top1_packed_projector": before,
              "int8": int8, "providers": b.providers, "bundle": str(b.directory)}
    if data is not None:
        x, y, skipped = load_labelled_folder(b, data)
        report["data_top1"] = top1(classify(b, x, projector), y)
        report["data_top1_packed_projector"] = top1(classify(b, x), y)
        need = min_accuracy if min_accuracy is not None else 0.0
        _check(checks, "data accuracy", report["data_top1"] >= need,
               f"top-1 {report['data_top1']:.1%} on {len(y)} images" + (f" ({skipped} unreadable skipped)" if skipped else "")
               + f"; packed projector {report['data_top1_packed_projector']:.1%}" + (f"; need {need:.1%}" if min_accuracy is not None else ""))
        # Chance: the better of guessing uniformly over the bundle's classes and always answering
        # the commonest class of --data. Top-1 must beat it at 3 sigma (exact binomial tail).
        chance = max(1.0 / len(b.class_names), float(np.bincount(y).max()) / len(y))
        k = chance_bound(len(y), chance)
        correct = int(round(report["data_top1"] * len(y)))
        report["chance_top1"] = chance
        report["chance_bound_top1"] = None if k is None else k / len(y)
        if len(np.unique(y)) < 2:  # always answering that class is right every time: no number of images helps
            _check(checks, "above chance", False, "--data holds one class, so top-1 cannot be told from chance (100.0%) however many "
                   "images it has; pass a --data folder with at least two of the bundle's classes")
        elif k is None:
            _check(checks, "above chance", False, f"{len(y)} images cannot tell top-1 from chance ({chance:.1%}) at 3 sigma; pass more --data images")
        else:
            _check(checks, "above chance", correct >= k,
                   f"top-1 {report['data_top1']:.1%} ({correct}/{len(y)}); chance {chance:.1%}, need {k}/{len(y)} ({k / len(y):.1%}) to beat it at 3 sigma")
        _expected_check(checks, report, m.get("reference") or {}, len(y), margin, int8)
    p50, p95 = latency_ms(b, syn_x[:1], projector)
    report["latency_ms_p50"], report["latency_ms_p95"] = p50, p95
    _check(checks, "latency", max_latency_ms is None or p95 <= max_latency_ms,
           f"batch 1: p50 {p50:.2f} ms, p95 {p95:.2f} ms" + (f" (limit {max_latency_ms:g} ms)" if max_latency_ms is not None else ""))
    report["peak_rss_mb"] = peak_rss_mb()
    report["ok"] = all(c["ok"] is not False for c in checks)  # a skipped check (None) fails nothing
    return report


def is_image_list(images) -> bool:
    """A list/tuple of images, or an (N, H, W, 3) array; anything else is one image."""
    return isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4)


def as_image_list(images) -> list:
    return list(images) if is_image_list(images) else [images]


def edge_canvas(image, size: int, interpolation: str) -> np.ndarray:
    """One image (file path, PIL image or (H, W, 3) uint8 array) -> (size, size, 3) uint8 canvas,
    decoded and resized exactly as ``edgedd predict`` does for files (:func:`edgedd.images.load_canvas`)."""
    if isinstance(image, (str, os.PathLike)):
        try:
            return load_canvas(str(image), size, interpolation)
        except FileNotFoundError:
            raise EdgeddError(f"image {image} does not exist", "pass existing image files") from None
        except PermissionError:
            raise EdgeddError(f"cannot read image {image} (permission denied)", PERMISSION_FIX) from None
        except NotRegularFile as e:  # a directory, or a FIFO named x.png (refused before it could block)
            raise EdgeddError(f"image {image} is {e.kind}, not a file", "pass image files") from None
        except UNREADABLE_IMAGE as e:  # incl. decompression bombs and MemoryError
            raise EdgeddError(f"cannot read image {image} ({type(e).__name__})", "pass a JPEG, PNG, BMP or WebP file") from None
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise EdgeddError(f"an image array of shape {image.shape} and dtype {image.dtype} is not an RGB image",
                              "pass (H, W, 3) uint8 arrays (e.g. np.asarray(pil_image.convert('RGB')))")
        image = Image.fromarray(np.ascontiguousarray(image), "RGB")
    if not isinstance(image, Image.Image):
        raise EdgeddError(f"cannot classify a {type(image).__name__}", "pass a file path, a PIL image or an (H, W, 3) uint8 array")
    return np.asarray(resize_center_crop(to_rgb(image), size, interpolation), dtype=np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def top_indices(prob: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of one row, largest first (ties: lower index first)."""
    if k < 1:
        raise EdgeddError(f"top_k is {k}", "ask for at least one label")
    return np.argsort(-prob, kind="stable")[: min(k, len(prob))]


def predict_files(b: Bundle, images: list[str], topk: int = 5) -> list[dict]:
    """``edgedd predict``'s answer: per image file, the ``topk`` labels with index and probability."""
    prob = b.probabilities([str(p) for p in images])
    return [{"image": str(p), "top": [{"label": b.class_names[i], "index": int(i), "prob": float(row[i])} for i in top_indices(row, topk)]}
            for p, row in zip(images, prob)]


def predict(directory: str | Path, images: list[str], topk: int = 5, int8: bool = False) -> list[dict]:
    """Open (and verify) the bundle, then :func:`predict_files`."""
    return predict_files(Bundle.open(directory, int8=int8), images, topk)


def inspect(path: str | Path) -> dict:
    """What an artifact (or a bundle directory) holds."""
    path = Path(path)
    if path.is_dir():
        path = path / art.ARTIFACT_FILE
    a = art.read(require_file(path, "artifact", "pass a bundle directory made by edgedd pack"))
    return {
        "file": str(path),
        "format": a.meta.get("format"),
        "sha256": a.file_sha256,
        "classes": len(a.meta.get("class_names", [])),
        "class_names": a.meta.get("class_names"),
        "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in sorted(a.tensors.items())},
        "distill": a.meta.get("distill"),
        "edge": a.meta.get("edge"),
        "onnx": a.meta.get("onnx"),
        "reference": a.meta.get("reference"),
    }
