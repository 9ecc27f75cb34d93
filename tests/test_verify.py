"""``mimo-ref verify``: the command around the golden case table (the cases themselves run in
``tests/golden/test_cases.py``): its default fixture set, its errors, and a perturbed fixture failing exactly
its own row."""

from __future__ import annotations

import shutil

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from mimo_ref import cli, verify
from tests.conftest import DEFAULT_GOLDEN


def keys(path) -> list[str]:
    with safe_open(str(path), framework="numpy") as f:
        return list(f.keys())


def parse_table(output: str) -> dict[str, str]:
    """case -> result, using the header's column offsets."""
    lines = output.splitlines()
    header = lines[0]
    result_at = header.index("result")
    rows = {}
    for line in lines[1:]:
        if line.endswith(" failed") and "passed" in line:
            break
        rows[line[: header.index("max abs")].strip()] = line[result_at : result_at + 4]
    return rows


def test_default_golden_dir_is_the_bundled_copy():
    assert verify.resolve_golden_dir(None) == DEFAULT_GOLDEN.resolve()


def test_not_a_fixture_set_is_a_user_error(tmp_path, capsys):
    assert cli.main(["verify", "--golden-dir", str(tmp_path)]) == 2
    assert "not a golden fixture set" in capsys.readouterr().err


def test_perturbed_expected_value_fails_exactly_that_case(golden_dir, tmp_path, capsys):
    """A copy of the fixture set with one official float32 LM output nudged by 1e-3 relative: only it fails."""
    copy = tmp_path / "golden"
    shutil.copytree(golden_dir, copy)
    path = copy / "lm" / "expected.safetensors"
    expected = load_file(str(path))
    target = sorted(k for k in expected if k.startswith("f32.") and np.issubdtype(expected[k].dtype, np.floating))[0]
    expected[target] = expected[target] * np.float32(1.001)
    save_file(expected, str(path))

    code = cli.main(["verify", "--golden-dir", str(copy), "--only", "lm/f32."])
    out = capsys.readouterr().out
    assert code == 1, out
    rows = parse_table(out)
    assert len(rows) == sum(k.startswith("f32.") for k in expected)
    assert {case for case, result in rows.items() if result == "FAIL"} == {f"lm/{target}"}
