"""Every code reference in docs/ and README.md resolves: files exist, named functions exist, links work.

References are written ``mimo_ref/lm.py::input_embeds`` (a module attribute, dotted for nested attributes),
``::name`` right after such a reference (same module), ``tests/test_x.py::test_y`` (a test function), plain
``mimo_ref/...py`` / ``tests/...py`` paths, and relative markdown links ``[text](page.md)``.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
REF = re.compile(
    r"((?:mimo_ref|tests)/[\w/]+\.py)::([A-Za-z_][\w.]*)|`::([A-Za-z_][\w.]*)|((?:mimo_ref|tests)/[\w/]+\.py)"
)
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def references(text: str):
    """(file, name or None) for each reference. A bare `` `::name` `` continues the last reference of its kind:
    the last tests file for ``test_*`` names, the last ``mimo_ref`` module otherwise."""
    last = {"tests": None, "mimo_ref": None}
    for match in REF.finditer(text):
        path, name, bare, plain = match.groups()
        path = path or plain
        if path:
            last[path.split("/")[0]] = path
        if plain:
            yield plain, None
        elif bare:
            kind = "tests" if bare.startswith("test_") else "mimo_ref"
            if last[kind] is None:
                raise AssertionError(f"`::{bare}` with no {kind} file named before it")
            yield last[kind], bare
        else:
            yield path, name


def module_name(path: str) -> str:
    return path[: -len(".py")].replace("/", ".").removesuffix(".__init__")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_code_references_resolve(page):
    text = page.read_text(encoding="utf-8")
    checked = 0
    for path, name in references(text):
        assert (ROOT / path).is_file(), f"{page.name}: {path} does not exist"
        if name is None:
            continue
        if path.startswith("tests/"):
            source = (ROOT / path).read_text(encoding="utf-8")
            assert re.search(rf"def {re.escape(name)}\b", source), f"{page.name}: {path}::{name} not found"
        else:
            obj = importlib.import_module(module_name(path))
            for part in name.split("."):
                assert hasattr(obj, part), f"{page.name}: {path}::{name} does not exist"
                obj = getattr(obj, part)
        checked += 1
    if page.parent.name == "docs" and page.name != "index.md":
        assert checked > 0, f"{page.name} links no code: every component page names the functions it describes"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_markdown_links_resolve(page):
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        assert (page.parent / target).is_file(), f"{page.name}: link to {target} is broken"


SOURCES = sorted(p for p in (ROOT / "mimo_ref").rglob("*.py")) + sorted(
    p for p in (ROOT / "tests").rglob("*.py") if "fixtures" not in p.parts
)


def test_no_reference_to_files_outside_the_project():
    """The developers' notes (``SPEC-NOTES``) are not part of the project: code and docs point at docs/quirks.md.
    (tests/fixtures/ holds verbatim copies of the fixture set and is not checked.)"""
    outside = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in [*SOURCES, *PAGES]
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "SPEC-NOTES" in line and path.name != "test_docs.py"
    ]
    assert not outside, f"references to SPEC-NOTES (not in the project; use docs/quirks.md): {outside}"
