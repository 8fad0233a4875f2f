"""Hub weights: where timm downloads a backbone's pretrained weights from, and failing at once when
they cannot come.

``load_backbone(name, "hub")`` calls :func:`check_hub_reachable` before timm's own download, which
retries an unreachable hub with back-off for about a minute: here the failure is one line naming
``hf download`` and ``--weights PATH``. ``HF_HUB_OFFLINE=1`` skips the network altogether.
"""

from __future__ import annotations

import os

from edgedd.core.errors import EdgeddError

from .timm_rules import pretrained_cfg

HUB_PROBE_TIMEOUT_S = 5.0  # one HEAD request, no retries; HF_HUB_ETAG_TIMEOUT overrides it


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it, but read now, not at its import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_weights_file(name: str) -> tuple[str, str | None, str] | None:
    """(repo id, revision, safetensors file) timm downloads ``name``'s pretrained weights from, or
    None when they do not come from the Hugging Face hub (a plain URL, or no pretrained config)."""
    cfg = pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    repo, _, revision = hub_id.partition("@")
    filename = getattr(cfg, "hf_hub_filename", None) or "pytorch_model.bin"
    if filename.endswith(
        "pytorch_model.bin"
    ):  # timm tries the safetensors twin first (open_clip_pytorch_model.bin too)
        filename = filename[: -len("pytorch_model.bin")] + "model.safetensors"
    return repo, revision or None, filename


def _hub_unreachable(name: str, repo: str, filename: str) -> EdgeddError:
    return EdgeddError(
        f"cannot download {name} weights from the hub (offline?): download {filename} on a connected machine "
        f"(e.g. hf download {repo} {filename}) and pass --weights PATH"
    )


def check_hub_reachable(name: str) -> None:
    """Fail at once, in one line naming the offline fix, when ``name``'s hub weights cannot come.

    timm's own download retries an unreachable hub with back-off for about a minute. Here: weights
    already in the hub cache pass (timm loads them, offline too); with ``HF_HUB_OFFLINE`` set,
    anything else fails without touching the network; otherwise one HEAD request with a short
    timeout (``HF_HUB_ETAG_TIMEOUT`` seconds if set, else 5) and no retries decides. A hub that
    answers, even with an error (no such file, gated repo), passes: timm's attempt reports that.
    """
    src = hub_weights_file(name)
    if src is None:
        return
    repo, revision, filename = src
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - timm without huggingface_hub: timm's own error
        return
    if isinstance(try_to_load_from_cache(repo, filename, revision=revision), str):
        return
    if hub_offline():
        raise _hub_unreachable(name, repo, filename)
    try:
        timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or HUB_PROBE_TIMEOUT_S)
    except ValueError:
        timeout = HUB_PROBE_TIMEOUT_S
    try:
        get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=timeout, retry_on_errors=False)
    except OfflineModeIsEnabled:
        raise _hub_unreachable(name, repo, filename) from None
    except HfHubHTTPError as e:
        if getattr(e, "response", None) is None:  # no answer at all
            raise _hub_unreachable(name, repo, filename) from None
    except Exception:  # DNS, connection refused, timeout, proxy: no hub here
        raise _hub_unreachable(name, repo, filename) from None
