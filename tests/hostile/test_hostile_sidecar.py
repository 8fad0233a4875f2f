"""The fitted-projector sidecars (projector.fit.<variant>.safetensors, and an older edgedd's
projector.finetuned.safetensors) are validated, not trusted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _crafted import one_line_error
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.core.stio import serialize
from edgedd.device import artifact as art
from edgedd.device import finetune, sidecar


def _forge(bundle, weight=None, bias=None, **meta_changes):
    """A sidecar exactly as deploy-check writes one (right hash, right backbone), then the given changes."""
    a = art.read(bundle / art.ARTIFACT_FILE)
    w0, b0 = a["projector.weight"], a["projector.bias"]
    meta = {
        "artifact_sha256": a.file_sha256,
        "backbone": "fp32",
        "backbone_sha256": a.meta["onnx"]["backbone"]["sha256"],
        "method": "ridge (closed form)",
    }
    meta.update(meta_changes)
    tensors = {"weight": w0.copy() if weight is None else weight(w0), "bias": b0.copy() if bias is None else bias(b0)}
    sidecar.sidecar_path(bundle, "fp32", "fit").write_bytes(serialize(tensors, metadata=meta))


def _nan(w):
    w = w.copy()
    w[0, 0] = np.nan
    return w


FORGERIES = {
    "NaN weights": (dict(weight=_nan), "NaN or infinite"),
    "infinite bias": (dict(bias=lambda b: np.full_like(b, np.inf)), "NaN or infinite"),
    "wrong shape": (dict(weight=lambda w: w[:, :-1].copy()), "shape"),
    "bias too long": (dict(bias=lambda b: np.concatenate([b, b])), "shape"),
    "float64": (dict(weight=lambda w: w.astype(np.float64)), "float32"),
    "int8 variant": (dict(backbone="int8"), "int8 backbone"),
    "no variant (old file)": (dict(backbone=""), "backbone"),
    "another backbone graph": (dict(backbone_sha256="0" * 64), "backbone"),
    "another artifact": (dict(artifact_sha256="0" * 64), "another artifact"),
}


@pytest.mark.parametrize("case", FORGERIES)
def test_a_forged_sidecar_is_refused_by_predict_and_flagged_by_deploy_check(bundle, packed, case):
    changes, words = FORGERIES[case]
    _forge(bundle, **changes)
    image = str(next((packed["heldout"] / "square").iterdir()))
    one_line_error(CliRunner().invoke(app, ["predict", str(bundle), image]), "not a valid fitted projector", words)
    with pytest.warns(UserWarning, match="ignored, the packed projector is used") as w:
        r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--no-fine-tune", "--json"])
    assert r.exit_code == 3 and "Traceback" not in r.output, r.output
    ours = [str(x.message) for x in w if issubclass(x.category, UserWarning) and "packed projector" in str(x.message)]
    assert len(ours) == 1 and words in ours[0], [
        str(x.message) for x in w
    ]  # not w[0]: an unrelated warning may come first
    rep = json.loads(r.stdout)
    assert [c["name"] for c in rep["checks"] if not c["ok"]] == ["fine-tune"], rep["checks"]


@pytest.mark.parametrize(
    "name", [finetune.FINETUNED_FILE, "projector.fit.fp32.safetensors", "projector.adapt.fp32.safetensors"]
)
def test_a_damaged_or_odd_sidecar(bundle, packed, name):
    image = str(next((packed["heldout"] / "square").iterdir()))
    (bundle / name).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    one_line_error(CliRunner().invoke(app, ["predict", str(bundle), image]), "not a valid fitted projector", name)
    (bundle / name).unlink()
    (bundle / name).mkdir()
    one_line_error(CliRunner().invoke(app, ["predict", str(bundle), image]), "not a regular file")


def _settings(bundle, **changes) -> str:
    a = art.read(bundle / art.ARTIFACT_FILE)
    return json.dumps(
        {
            "artifact_sha256": a.file_sha256,
            "backbone": "fp32",
            "backbone_sha256": a.meta["onnx"]["backbone"]["sha256"],
            "intra_op_threads": 1,
            **changes,
        }
    )


@pytest.mark.parametrize("body", ["{", "[]", "x" * 5000, "threads 0", "threads true", "threads 1e9"])
def test_damaged_runtime_settings_are_refused(bundle, packed, body):
    image = str(next((packed["heldout"] / "square").iterdir()))
    if body.startswith("threads "):
        body = _settings(bundle, intra_op_threads=json.loads(body.split()[1]))
    sidecar.settings_path(bundle, "fp32").write_text(body)
    one_line_error(CliRunner().invoke(app, ["predict", str(bundle), image]), "not valid runtime settings", "--threads")
    assert (
        CliRunner().invoke(app, ["predict", str(bundle), image, "--threads", "1"]).exit_code == 0
    )  # the override needs no settings


def test_runtime_settings_are_used_and_a_stale_file_is_ignored(bundle, packed):
    image = str(next((packed["heldout"] / "square").iterdir()))
    for body, threads in (
        (_settings(bundle, intra_op_threads=2), 2),
        (_settings(bundle, artifact_sha256="0" * 64, intra_op_threads=2), None),
        (_settings(bundle, backbone_sha256="0" * 64, intra_op_threads=2), None),
    ):
        sidecar.settings_path(bundle, "fp32").write_text(body)
        r = CliRunner().invoke(app, ["predict", str(bundle), image, "--json"])
        assert r.exit_code == 0 and r.stderr == "" and json.loads(r.stdout)["threads"] == threads, (r.stderr, body)


def test_an_honest_sidecar_is_used(bundle, packed):
    _forge(bundle, weight=lambda w: np.zeros_like(w), bias=lambda b: np.zeros_like(b))  # valid, and visibly different
    image = str(next((packed["heldout"] / "square").iterdir()))
    r = CliRunner().invoke(app, ["predict", str(bundle), image, "--json", "-k", "3"])
    assert r.exit_code == 0, r.stderr
    bias = art.read(bundle / art.ARTIFACT_FILE)["classifier.bias"].astype(np.float64)
    want = np.sort(np.exp(bias - bias.max()) / np.exp(bias - bias.max()).sum())[::-1]
    np.testing.assert_allclose(
        [t["prob"] for t in json.loads(r.stdout)["predictions"][0]["top"]], want, rtol=1e-4
    )  # zero projector: bias only


def test_deploy_check_writes_the_sidecar_only_when_the_fit_passes(bundle):
    r = CliRunner().invoke(app, ["deploy-check", str(bundle), "--ridge", "inf", "--json"])
    assert r.exit_code == 3 and "Traceback" not in r.output
    ft = next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "fine-tune")
    assert not ft["ok"] and "not written" in ft["detail"]
    assert not sidecar.sidecar_path(bundle, "fp32", "fit").exists()
    assert CliRunner().invoke(app, ["deploy-check", str(bundle)]).exit_code == 0
    assert sidecar.sidecar_path(bundle, "fp32", "fit").is_file()
