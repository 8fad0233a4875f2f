"""Fixtures for the crafted-input suite (the packed bundle itself comes from tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _crafted import OpenedPaths


@pytest.fixture
def bundle(packed, tmp_path) -> Path:
    """A private copy of the session's packed bundle, free to damage."""
    b = tmp_path / "bundle"
    shutil.copytree(packed["bundle"], b)
    return b


_OPENED: list[OpenedPaths] = []


@pytest.fixture
def opened() -> OpenedPaths:
    if not _OPENED:  # one audit hook for the whole session: hooks cannot be removed
        _OPENED.append(OpenedPaths())
    return _OPENED[0]
