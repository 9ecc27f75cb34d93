"""docs/prompts.md lists every prompt template string verbatim, so a port can build prompts from the docs alone."""

from __future__ import annotations

import json
from pathlib import Path

from mimo_ref import templates

PROMPTS_MD = Path(__file__).parents[1] / "docs" / "prompts.md"


def appendix() -> str:
    text = PROMPTS_MD.read_text()
    assert "## Appendix: the template strings, verbatim" in text
    return text.split("## Appendix: the template strings, verbatim", 1)[1]


def test_every_template_string_is_in_the_docs_at_its_index():
    docs = appendix()
    constants = {n: v for n, v in vars(templates).items() if n.isupper()}
    assert constants, "templates.py defines no constants?"
    for name, value in constants.items():
        if name == "ASR_TEMPLATES":  # the two ASR pools concatenated, listed as such in the docs
            assert value == templates.ASR_ZH_TEMPLATES + templates.ASR_EN_TEMPLATES
            continue
        assert f"`{name}`" in docs, name
        if isinstance(value, tuple):
            block = docs.split(f"`{name}`", 1)[1].split("```text", 1)[1].split("```", 1)[0]
            listed = [line.strip().split(" ", 1) for line in block.strip().splitlines()]  # "index json-string"
            assert [(int(i), json.loads(s)) for i, s in listed] == list(enumerate(value)), name
        else:
            assert f"| `{name}` | `{json.dumps(value, ensure_ascii=False)}` |" in docs, name
