"""Every golden case of the fixture set, one test each: the same case table ``mimo-ref verify`` runs.

:func:`mimo_ref.verify.all_cases` turns each key of the fixture files (every ``expected`` tensor, prompt,
resample output and end-to-end run) into one named check with its tolerance; a key that no check knows fails.
This file runs that table, so the golden checks exist once (``docs/fixtures.md`` lists each case, what it proves
and its tolerance). The memo of a fixture set (loaded checkpoints, runs) is shared by all cases of the session.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from mimo_ref import verify

GOLDEN_MEMO: dict[Path, verify.Golden] = {}


def golden_set(root: Path) -> verify.Golden:
    if root not in GOLDEN_MEMO:
        GOLDEN_MEMO[root] = verify.Golden(verify.resolve_golden_dir(root))
    return GOLDEN_MEMO[root]


def cases_of(root: Path) -> dict[str, verify.Case]:
    """The named cases of the fixture set at ``root`` (one table per session, sharing one memo)."""
    return {case.name: case for case in verify.all_cases(golden_set(root))}


def pytest_generate_tests(metafunc):
    if "case_name" in metafunc.fixturenames:
        root = Path(metafunc.config.getoption("--golden-dir")).resolve()
        metafunc.parametrize("case_name", list(cases_of(root)))


def test_golden_case(case_name, golden_dir):
    row = cases_of(golden_dir)[case_name].run()
    assert row.passed, f"{row.case}: {verify.format_table([row]).splitlines()[-1]}"


def keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="numpy") as f:
        return list(f.keys())


def test_one_case_per_fixture_key(golden_dir):
    """No fixture key goes unchecked: every key of every fixture file has its case (unknown keys fail)."""
    names = set(cases_of(golden_dir))
    want = [f"lm/{k}" for k in keys(golden_dir / "lm" / "expected.safetensors")]
    want += [f"audio_tokenizer/{k}" for k in keys(golden_dir / "audio_tokenizer" / "expected.safetensors")]
    want += [f"pipeline/prompts/{k}" for k in keys(golden_dir / "pipeline" / "prompts.safetensors")]
    want += [f"pipeline/expected/{k}" for k in keys(golden_dir / "pipeline" / "expected.safetensors")]
    want += [f"pipeline/resample/{k}" for k in keys(golden_dir / "pipeline" / "resample.safetensors") if "out_" in k]
    missing = [name for name in want if name not in names]
    assert not missing, f"no golden case for {missing}"
