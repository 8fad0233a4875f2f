"""A timm hub name with --weights hub and no hub: one line with the offline fix, at once (no retries)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from edgedd.backbones import hub
from edgedd.backbones import loader as backbones
from edgedd.cli.host import app
from edgedd.core.errors import EdgeddError

NAME = "vit_tiny_patch16_224.augreg_in21k"
MESSAGE = (
    f"error: cannot download {NAME} weights from the hub (offline?): download model.safetensors on a connected machine "
    f"(e.g. hf download timm/{NAME} model.safetensors) and pass --weights PATH."
)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached, whatever this machine holds
    return tmp_path / "hf"


def test_hf_hub_offline_fails_at_once_with_the_fix(image_folder, tmp_path, monkeypatch, empty_hub_cache):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: pytest.fail("offline: no request"))
    r = CliRunner().invoke(
        app, ["distill", str(image_folder), "-b", NAME, "--weights", "hub", "-o", str(tmp_path / "run")]
    )
    assert r.exit_code == 1 and r.stdout == "", r.output
    assert r.stderr.splitlines() == [MESSAGE]
    assert not (tmp_path / "run" / "summary.json").exists()


def test_unreachable_hub_fails_after_one_request(monkeypatch, empty_hub_cache):
    import huggingface_hub

    calls = []

    def unreachable(url, timeout=None, retry_on_errors=None, **kw):
        calls.append((url, timeout, retry_on_errors))
        raise ConnectionError(
            "[Errno -2] Name or service not known"
        )  # what DNS failure looks like, minus the http client

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    with pytest.raises(EdgeddError) as e:
        backbones.load_backbone(NAME, "hub")
    assert "error: " + e.value.one_line() == MESSAGE
    assert len(calls) == 1 and calls[0][1] == hub.HUB_PROBE_TIMEOUT_S and calls[0][2] is False
    assert calls[0][0].endswith(f"timm/{NAME}/resolve/main/model.safetensors")


def test_cached_weights_and_a_hub_that_answers_pass_the_check(monkeypatch, empty_hub_cache):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda repo, filename, **k: f"/cache/{repo}/{filename}"
    )
    hub.check_hub_reachable(NAME)  # cached: timm loads it offline
    monkeypatch.setattr(
        hub,
        "pretrained_cfg",
        lambda name: SimpleNamespace(hf_hub_id="timm/x@v2", hf_hub_filename="open_clip_pytorch_model.bin"),
    )
    assert hub.hub_weights_file("x") == (
        "timm/x",
        "v2",
        "open_clip_model.safetensors",
    )  # the safetensors twin timm tries first
    monkeypatch.setattr(
        hub, "pretrained_cfg", lambda name: SimpleNamespace(hf_hub_id=None, url="https://example.org/w.pth")
    )
    assert hub.hub_weights_file("x") is None
    hub.check_hub_reachable("x")  # weights from a plain URL: timm's own download, not checked here


def test_a_hub_that_answers_with_an_error_is_left_to_timm(monkeypatch, empty_hub_cache):
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    def not_found(url, **kw):
        raise HfHubHTTPError("404 Client Error", response=SimpleNamespace(status_code=404, headers={}, request=None))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", not_found)
    hub.check_hub_reachable(NAME)  # the hub is there: timm's attempt reports what is wrong
