"""Shared fixtures: the ../shared data (skipped with a reason when absent), trained runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TINYQ_SHARED", ROOT.parent / "shared"))
BITS = (2, 4, 8)


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests read the project's shared data from ../shared "
                    "(set TINYQ_SHARED to its location)")
    return path


@pytest.fixture(scope="session")
def people96() -> Path:
    return shared_path("data", "people96")


@pytest.fixture(scope="session")
def vww_dev() -> Path:
    return shared_path("data", "vww-dev")
