"""Locate the real EEG in ``../shared/data`` (see its README); skip clearly when absent.

The product never needs these files; tests that use real data call :func:`need`, which
skips the test with a message naming the missing folder. ``PAINHELM_SHARED_DATA``
overrides the location.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PAINHELM_SHARED_DATA", REPO.parent / "shared" / "data"))


def need(subfolder: str) -> Path:
    """The path of ``subfolder`` of the shared data, or skip the calling test."""
    path = SHARED_DATA / subfolder
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (set PAINHELM_SHARED_DATA to its folder)")
    return path
