"""The closed world holds for the other graph formats: .ort (pack --ort) and .tflite (pack --litert).

Every crafted artifact is re-signed (correct edgedd.sha256), so only the check under test can stop it."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from _crafted import one_line_error, resign
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.device.ort_scan import uses_external_data
from edgedd.export.pack import PackConfig, pack


@pytest.fixture(scope="module")
def ort_packed(packed, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort-hostile") / "bundle"
    pack(packed["run"], out, config=PackConfig(views=8, projector_epochs=100, ort=True, expect_images=0), device="cpu")
    return out


@pytest.fixture
def ort_bundle(ort_packed, tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(ort_packed, b)
    return b


def _check(bundle, *extra):
    return CliRunner().invoke(app, ["deploy-check", str(bundle), "--no-fine-tune", *extra])


def _crafted_ort_with_external_data() -> bytes:
    """A minimal ORT-format model whose one initializer says its bytes live in an external file."""
    import flatbuffers
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import (
        Graph as G,
    )
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import (
        InferenceSession as IS,
    )
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import (
        Model as M,
    )
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import (
        Tensor as T,
    )

    b = flatbuffers.Builder(0)
    name = b.CreateString("w")
    T.TensorStart(b), T.TensorAddName(b, name), T.TensorAddDataType(b, 1), T.TensorAddExternalDataOffset(b, 0)
    t = T.TensorEnd(b)
    G.GraphStartInitializersVector(b, 1)
    b.PrependUOffsetTRelative(t)
    inits = b.EndVector()
    G.GraphStart(b), G.GraphAddInitializers(b, inits)
    g = G.GraphEnd(b)
    M.ModelStart(b), M.ModelAddIrVersion(b, 8), M.ModelAddGraph(b, g)
    m = M.ModelEnd(b)
    version = b.CreateString("1")
    IS.InferenceSessionStart(b), IS.InferenceSessionAddOrtVersion(b, version), IS.InferenceSessionAddModel(b, m)
    b.Finish(IS.InferenceSessionEnd(b), file_identifier=b"ORTM")
    return bytes(b.Output())


def _swap(bundle, section: str, role: str, name: str, data: bytes | None = None):
    """Point ``section``'s ``role`` graph at ``name`` (written with ``data`` when given), re-signed with its hash."""
    if data is not None:
        (bundle / name).write_bytes(data)

    def edit(meta):
        graphs = meta["onnx"] if section == "onnx" else meta.setdefault(section, {"graphs": {}})["graphs"]
        graphs.setdefault(role, {})["file"] = name
        if data is not None:
            graphs[role]["sha256"] = hashlib.sha256(data).hexdigest()

    resign(bundle, edit)


def test_ort_names_outside_the_bundle_are_refused_alike(ort_bundle, tmp_path):
    shutil.copy(ort_bundle / "backbone.ort", tmp_path / "backbone.ort")
    errors = set()
    for name in ("../backbone.ort", str(tmp_path / "backbone.ort"), "sub/backbone.ort", ".."):
        _swap(ort_bundle, "ort", "backbone", name)
        errors.add(one_line_error(_check(ort_bundle, "--runtime", "ort"), "backbone"))
    assert len(errors) == 1, errors  # one message whatever the name


def test_ort_file_is_hashed_before_it_is_loaded(ort_bundle):
    data = bytearray((ort_bundle / "backbone.ort").read_bytes())
    data[len(data) // 2] ^= 1
    (ort_bundle / "backbone.ort").write_bytes(bytes(data))
    one_line_error(_check(ort_bundle, "--runtime", "ort"), "sha256 mismatch")
    assert _check(ort_bundle).exit_code in (0, 3)  # the .onnx graphs are untouched


def test_crafted_ort_with_external_data_is_refused(ort_bundle):
    crafted = _crafted_ort_with_external_data()
    assert uses_external_data(crafted)
    _swap(ort_bundle, "ort", "backbone", "evil.ort", crafted)
    one_line_error(_check(ort_bundle, "--runtime", "ort"), "external files")


def test_each_format_is_walked_by_its_own_walker(ort_bundle):
    # ONNX bytes under the ORT entry and ORT bytes under the ONNX entry: both refused as invalid
    _swap(ort_bundle, "ort", "projector", "p.ort", (ort_bundle / "projector.onnx").read_bytes())
    one_line_error(_check(ort_bundle, "--runtime", "ort"), "not a valid ORT-format model")
    _swap(ort_bundle, "onnx", "projector", "p.onnx", (ort_bundle / "projector.ort").read_bytes())
    one_line_error(_check(ort_bundle), "not a valid ONNX model")


def test_tflite_names_and_hashes_hold_without_litert(bundle, tmp_path):
    """The .tflite entries are checked (schema, bare name, sha256) before LiteRT is even imported."""
    fake = b"\x1c\x00\x00\x00TFL3" + bytes(64)
    for role in ("backbone", "projector", "classifier"):
        _swap(bundle, "litert", role, f"{role}.tflite", fake)
    try:
        import ai_edge_litert  # noqa: F401

        why = "LiteRT cannot load"  # correct hashes, not a model: refused in one line by the interpreter's load
    except ImportError:
        why = "needs the ai-edge-litert package"  # the device install without the optional package
    one_line_error(_check(bundle, "--runtime", "litert"), why)
    (bundle / "backbone.tflite").write_bytes(fake[:-1] + b"\x01")
    one_line_error(_check(bundle, "--runtime", "litert"), "sha256 mismatch")
    _swap(bundle, "litert", "backbone", "../backbone.tflite")
    one_line_error(_check(bundle, "--runtime", "litert"), "file name inside the bundle")


def test_absent_provider_and_missing_sections_are_one_line(bundle):
    err = one_line_error(
        _check(bundle, "--provider", "NoSuchExecutionProvider"), "NoSuchExecutionProvider", "CPUExecutionProvider"
    )
    assert "--provider" in err
    one_line_error(_check(bundle, "--runtime", "ort"), "no ort graphs", "pack --ort")
    r = CliRunner().invoke(app, ["predict", str(bundle), "x.png", "--provider", "NoSuchExecutionProvider"])
    one_line_error(r, "NoSuchExecutionProvider")
