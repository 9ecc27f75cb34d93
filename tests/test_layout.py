"""The package's layering (docs/index.md, "Layout"): the model never imports the tools.

Model modules compute what MiMo-Audio computes (layers, LM, generation, audio tokenizer, prompts, pipeline, checkpoint
loading, precision, sharding, the activation taps they call). Tool modules check, measure, dump or drive them
(``verify``, ``bench``, ``trace``, the CLI, the property strategies, ...). A tool may import the model, never the
reverse, so a port can read the model without the tooling; every module of the package is in exactly one group.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mimo_ref"

TOOLS = {
    "mimo_ref.cli",
    "mimo_ref.cli_checks",
    "mimo_ref.verify",
    "mimo_ref.metrics",
    "mimo_ref.bench",
    "mimo_ref.bench_breakdown",
    "mimo_ref.random_weights",
    "mimo_ref.stream_bench",
    "mimo_ref.long_audio_bench",
    "mimo_ref.trace",
    "mimo_ref.scale",
    "mimo_ref.scale_run",
    "mimo_ref.stream_io",
    "mimo_ref.testing",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_tool(name: str) -> bool:
    return any(name == tool or name.startswith(tool + ".") for tool in TOOLS)


def imported_modules(path: Path) -> set[str]:
    """Every mimo_ref module ``path`` imports, at any depth of the file (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from mimo_ref import bench`
    return {name for name in out if name.split(".")[0] == "mimo_ref"}


def test_model_modules_never_import_tools():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    assert all(is_tool(t) or t in modules or f"{t}.__init__" in modules for t in TOOLS), "TOOLS names a missing module"
    wrong = {
        name: sorted(t for t in imported_modules(path) if is_tool(t))
        for name, path in modules.items()
        if not is_tool(name)
    }
    wrong = {name: tools for name, tools in wrong.items() if tools}
    assert not wrong, f"model modules importing tool modules: {wrong}"
