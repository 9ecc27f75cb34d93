"""Where the files that come with a source checkout live: the package is installed from one (``pip install -e .``).

The bundled tiny checkpoints (``weights/``, random weights: every command runs out of the box), the golden fixtures
of the official implementation (``mimo-ref verify``'s default set) with the official calls behind its prompt
cases, and the real checkpoints' tensor names and shapes (``mimo-ref make-checkpoint``). Only paths: importing
this module loads nothing.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_LM = REPO_ROOT / "weights" / "mimo_audio_tiny"
BUNDLED_AUDIO_TOKENIZER = REPO_ROOT / "weights" / "mimo_audio_tokenizer_tiny"
BUNDLED_GOLDEN = REPO_ROOT / "tests" / "fixtures" / "golden"
REAL_SHAPES = REPO_ROOT / "tests" / "fixtures" / "real_shapes"
OFFICIAL_CALLS = REPO_ROOT / "tests" / "fixtures" / "official_calls.py"  # the prompt fixtures' official calls
