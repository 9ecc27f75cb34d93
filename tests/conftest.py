"""Shared pytest setup: the ``--golden-dir`` option and fixture-file helpers.

Golden tests read every shape, count and id from the fixture files, so they pass unchanged on any fixture set of
the layout described in ``tests/fixtures/golden/README.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

DEFAULT_GOLDEN = Path(__file__).parent / "fixtures" / "golden"

settings.register_profile("ci", max_examples=10, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("thorough", max_examples=200, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("MIMO_REF_HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser):
    parser.addoption(
        "--golden-dir",
        default=str(DEFAULT_GOLDEN),
        help="folder with lm/, audio_tokenizer/, pipeline/ fixtures of the official implementation",
    )


@pytest.fixture(scope="session")
def golden_dir(request) -> Path:
    path = Path(request.config.getoption("--golden-dir")).resolve()
    if not (path / "lm" / "config.json").is_file():
        raise pytest.UsageError(f"--golden-dir {path} has no lm/config.json: not a golden fixture set")
    return path
