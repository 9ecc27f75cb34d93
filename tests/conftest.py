"""Shared pytest setup: the ``--golden-dir`` option and fixture-file helpers.

Golden tests read every shape, count and id from the fixture files, so they pass unchanged on any fixture set of
the layout described in ``tests/fixtures/golden/README.md``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

DEFAULT_GOLDEN = Path(__file__).parent / "fixtures" / "golden"

settings.register_profile("ci", max_examples=10, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("thorough", max_examples=200, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("MIMO_REF_HYPOTHESIS_PROFILE", "ci"))


COMPILE_CACHE = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """One XLA compilation cache per test session, shared by the xdist workers and the suite's subprocesses, so a
    program several tests (or both workers) compile is compiled once. A fresh folder every session, removed at the
    end: nothing carries over between runs. Set JAX_COMPILATION_CACHE_DIR yourself to use (and keep) your own."""
    if COMPILE_CACHE not in os.environ:  # the controller; xdist workers and subprocesses inherit the variable
        os.environ[COMPILE_CACHE] = config._mimo_ref_cache = tempfile.mkdtemp(prefix="mimo-ref-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # cache every program
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    import jax  # noqa: PLC0415  after the variables, in case a plugin imported jax already

    jax.config.update("jax_compilation_cache_dir", os.environ[COMPILE_CACHE])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"])
    )
    jax.config.update(
        "jax_persistent_cache_min_entry_size_bytes", int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"])
    )


def pytest_unconfigure(config):
    if hasattr(config, "_mimo_ref_cache"):
        shutil.rmtree(config._mimo_ref_cache, ignore_errors=True)


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
