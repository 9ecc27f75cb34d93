"""Differential testing: run a reference and a candidate on Hypothesis-drawn cases, report the first mismatch.

:func:`differential` is the one entry point. A port checks one of its functions against the matching
``mimo_ref`` function (or the other way round) on drawn inputs; on the first case where the outputs differ beyond
the tolerance it raises an ``AssertionError`` whose message names every drawn input (shapes, dtypes, small values)
and where and by how much the outputs differ. With ``stages=True`` the candidate also reports its intermediates
under the reference's tap names (``docs/tracing.md``), and the message names the first stage that differs, so a
port learns where it diverges, not only that it does (:func:`with_stages` collects a JAX candidate's). See
``docs/porting_with_properties.md``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from mimo_ref.metrics import tolerance_excess
from mimo_ref.tap import collecting

MAX_SHOWN_VALUES = 16  # arrays with at most this many elements are printed in full in failure messages


def call(fn: Callable, case: Any) -> Any:
    """Call ``fn`` on a drawn case: a dict is passed as keyword arguments, a tuple as positional arguments,
    anything else as the single argument."""
    if isinstance(case, dict):
        return fn(**case)
    if isinstance(case, tuple):
        return fn(*case)
    return fn(case)


def case_items(case: Any) -> list[tuple[str, Any]]:
    """``(name, value)`` pairs of a drawn case, named as :func:`call` passes them."""
    if isinstance(case, dict):
        return list(case.items())
    if isinstance(case, tuple):
        return [(f"arg{i}", v) for i, v in enumerate(case)]
    return [("case", case)]


MAX_INLINE_LEAVES = 8  # containers with more array leaves (e.g. a params pytree) are summarised


def is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, np.generic)


def describe(value: Any) -> str:
    """A one-line description of a drawn value: arrays by dtype, shape, range (and values when small); containers
    of many arrays (a params pytree) by their size; anything else by ``repr``."""
    if is_array(value):
        array = np.asarray(value)
        head = f"{array.dtype}{list(array.shape)}"
        if array.size == 0:
            return head
        if array.size <= MAX_SHOWN_VALUES:
            values = np.array2string(array.reshape(-1), precision=6, separator=", ", max_line_width=10**6)
            return f"{head} {values}"
        if np.issubdtype(array.dtype, np.number):
            return f"{head} min {array.min():.6g} max {array.max():.6g}"
        return head
    if isinstance(value, (dict, list, tuple)):
        leaves = jax.tree_util.tree_leaves(value)
        if any(is_array(leaf) for leaf in leaves):
            if len(leaves) > MAX_INLINE_LEAVES:
                dtypes = sorted({str(np.asarray(leaf).dtype) for leaf in leaves if is_array(leaf)})
                size = sum(int(np.size(leaf)) for leaf in leaves)
                return f"pytree of {len(leaves)} leaves ({'/'.join(dtypes)}, {size} values)"
            if isinstance(value, dict):
                return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in value.items()) + "}"
            inner = ", ".join(describe(v) for v in value)
            return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return repr(value)


class Drawn:
    """A drawn case with a short ``repr``, so Hypothesis's own "Falsifying example" line stays readable."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return "; ".join(f"{name}={describe(v)}" for name, v in case_items(self.value))


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """Where a candidate output differs from the reference output."""

    path: str  # e.g. "output[1]['logits']"
    detail: str


def widen(array: np.ndarray) -> np.ndarray:
    """float64 (complex128 for complex values) copy, so errors are measured above the compared precision."""
    return array.astype(np.complex128 if np.iscomplexobj(array) else np.float64)


def leaf_mismatch(path: str, ref: Any, cand: Any, rtol: float, atol: float | None) -> Mismatch | None:
    """Compare one output leaf. Integers/booleans must be equal; floats must satisfy
    ``|cand - ref| <= atol + rtol * |ref|`` elementwise, with ``atol = rtol * max|ref|`` when not given."""
    ref_a, cand_a = np.asarray(ref), np.asarray(cand)
    if ref_a.shape != cand_a.shape:
        return Mismatch(path, f"shape {list(cand_a.shape)} but the reference has {list(ref_a.shape)}")
    if ref_a.size == 0:
        return None
    exact = not (np.issubdtype(ref_a.dtype, np.inexact) or np.issubdtype(cand_a.dtype, np.inexact))
    if exact:
        bad = ref_a != cand_a
        if not bad.any():
            return None
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        return Mismatch(
            path,
            f"{int(bad.sum())} of {bad.size} values differ; first at index {index}: "
            f"candidate {cand_a[index].item()!r}, reference {ref_a[index].item()!r}",
        )
    ref64, cand64 = widen(ref_a), widen(cand_a)
    finite = np.isfinite(ref64)
    same_special = np.isnan(ref64) & np.isnan(cand64) | (ref64 == cand64)  # NaN matches NaN, inf matches inf
    if not np.array_equal(finite, np.isfinite(cand64)) or not same_special[~finite].all():
        bad = (finite != np.isfinite(cand64)) | (~finite & ~same_special)
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        return Mismatch(
            path,
            f"non-finite values differ; first at index {index}: candidate {cand64[index]}, reference {ref64[index]}",
        )
    scale = float(np.max(np.abs(ref64[finite]))) if finite.any() else 0.0
    abs_tol = rtol * scale if atol is None else atol
    zero = np.zeros((), ref64.dtype)
    cand0, ref0 = np.where(finite, cand64, zero), np.where(finite, ref64, zero)  # matching non-finite entries: 0
    excess = tolerance_excess(cand0, ref0, rtol=rtol, atol=abs_tol)  # > 0: out of tolerance
    bad = excess > 0
    if not bad.any():
        return None
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape))
    err = np.abs(cand0 - ref0)
    allowed = err[index] - excess[index]  # atol + rtol * |reference| at the worst entry
    return Mismatch(
        path,
        f"max |candidate - reference| = {float(err.max()):.3e} (reference scale {scale:.3e}); worst at index "
        f"{index}: candidate {cand64[index]:.8g}, reference {ref64[index]:.8g}, allowed {allowed:.3e}; "
        f"{int(bad.sum())} of {bad.size} values out of tolerance",
    )


def first_mismatch(ref: Any, cand: Any, rtol: float, atol: float | None) -> Mismatch | None:
    """Compare two output pytrees (any JAX pytree: tuples, lists, dicts of arrays and scalars), leaf by leaf."""
    ref_leaves, ref_tree = jax.tree_util.tree_flatten_with_path(ref)
    cand_leaves, cand_tree = jax.tree_util.tree_flatten_with_path(cand)
    if ref_tree != cand_tree:
        return Mismatch("output", f"structure {cand_tree} but the reference returns {ref_tree}")
    for (path, r), (_, c) in zip(ref_leaves, cand_leaves, strict=True):
        found = leaf_mismatch("output" + jax.tree_util.keystr(path), r, c, rtol, atol)
        if found is not None:
            return found
    return None


def with_stages(fn: Callable) -> Callable:
    """``fn`` run inside :func:`mimo_ref.tap.collecting`: returns ``(output, {tap name: array})``, the stages it
    computed (jit disabled). A JAX candidate built on ``mimo_ref`` functions gives its stages this way; a port gives
    its own dict under the names of ``docs/tracing.md``."""

    def staged(*args, **kwargs):
        with collecting() as store:
            out = fn(*args, **kwargs)
        return out, dict(store)

    return staged


def first_stage_mismatch(
    ref_stages: dict[str, Any], cand_stages: dict[str, Any], rtol: float, atol: float | None
) -> tuple[Mismatch | None, list[str]]:
    """Compare the stages the candidate reports, in the reference's order -> (first mismatch or None, the names of
    the stages compared before it, in order). A stage name the reference never tapped raises ValueError."""
    unknown = [name for name in cand_stages if name not in ref_stages]
    if unknown:
        known = ", ".join(list(ref_stages)[:12])
        raise ValueError(
            f"the candidate reports stages the reference does not compute: {unknown[:5]}; the reference's stages "
            f"are, in order: {known}{', ...' if len(ref_stages) > 12 else ''} (names: docs/tracing.md)"
        )
    agreed = []
    for name in ref_stages:
        if name not in cand_stages:
            continue
        found = leaf_mismatch(f"stage {name}", ref_stages[name], cand_stages[name], rtol, atol)
        if found is not None:
            return found, agreed
        agreed.append(name)
    return None, agreed


def differential(
    reference_fn: Callable,
    candidate_fn: Callable,
    strategy: st.SearchStrategy,
    rtol: float,
    *,
    atol: float | None = None,
    max_examples: int | None = None,
    shrink: bool = False,
    stages: bool = False,
) -> None:
    """Check ``candidate_fn`` against ``reference_fn`` on cases drawn from ``strategy``.

    Each drawn case is passed to both functions (a dict as keyword arguments, a tuple as positional arguments,
    anything else as one argument). Outputs are pytrees of arrays/scalars with the same structure; integer and
    boolean leaves must be equal, floating leaves must satisfy ``|cand - ref| <= atol + rtol * |ref|`` elementwise
    (``atol`` defaults to ``rtol * max|ref|`` of that leaf, so values far below the leaf's scale are compared
    absolutely); non-finite values must match exactly.

    ``stages=True``: say *where* a port diverges, not only *that* it does. The reference runs inside
    :func:`mimo_ref.tap.collecting` (eagerly), which records every stage it computes under the tap names of
    ``docs/tracing.md``; ``candidate_fn`` returns ``(output, stages)`` with ``stages`` a dict from any of those
    names to the port's value (a port reports what it has; :func:`with_stages` gives a JAX candidate's). The
    reported stages are compared first, in the reference's order, with the same tolerance; the message names the
    first diverging stage and the stages that agreed before it. Then the outputs are compared.

    Raises ``AssertionError`` on the first case where they differ, or where the candidate raises, with a message
    naming the case number, every drawn input and the mismatch. ``shrink=True`` lets Hypothesis minimise the
    failing case first (more calls, possibly more compiles). ``max_examples`` overrides the active Hypothesis
    profile's. Call it from a plain test function, not from inside another ``@given`` test.
    """
    counter = itertools.count(1)
    reference = with_stages(reference_fn) if stages else reference_fn
    first_failure: list[int] = []  # Hypothesis replays a failing case once more before reporting it

    def check(drawn: Drawn):
        case = drawn.value
        number = first_failure[0] if first_failure else next(counter)
        first_failure.append(number)  # kept only if this case fails (removed below when it passes)
        ref = call(reference, case)
        try:
            cand = call(candidate_fn, case)
        except Exception as exc:  # a crash of the candidate is a finding too
            raise AssertionError(failure_message(number, case, f"candidate raised {exc!r}", rtol, atol)) from exc
        note = ""
        if stages:
            (ref, ref_stages), (cand, cand_stages) = ref, unpack_staged(cand)
            found, agreed = first_stage_mismatch(ref_stages, cand_stages, rtol, atol)
            if found is not None:
                before = f"after {len(agreed)} agreeing stages" + (f", the last {agreed[-1]}" if agreed else "")
                where = f"first diverging stage: {found.path[len('stage ') :]} ({before})"
                raise AssertionError(failure_message(number, case, f"{where}\n  {found.detail}", rtol, atol))
            note = f" (all {len(agreed)} stages the candidate reports agree)"
        found = first_mismatch(ref, cand, rtol, atol)
        if found is not None:
            raise AssertionError(failure_message(number, case, f"{found.path}: {found.detail}{note}", rtol, atol))
        first_failure.clear()

    overrides: dict[str, Any] = {"deadline": None, "database": None, "report_multiple_bugs": False}
    if max_examples is not None:
        overrides["max_examples"] = max_examples
    if not shrink:
        overrides["phases"] = (Phase.explicit, Phase.reuse, Phase.generate)
    try:
        settings(**overrides)(given(strategy.map(Drawn))(check))()
    except AssertionError as exc:
        # Hypothesis notes the falsifying example as the full repr of every drawn array (params included); the
        # message above already describes each input, so that note is dropped (the reproduction note is kept).
        notes = getattr(exc, "__notes__", None)
        if notes:
            exc.__notes__ = [n for n in notes if not n.startswith("Falsifying example")]
        raise


def unpack_staged(result: Any) -> tuple[Any, dict[str, Any]]:
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
        raise TypeError("with stages=True the candidate must return (output, {stage name: array})")
    return result


def failure_message(number: int, case: Any, what: str, rtol: float, atol: float | None) -> str:
    """The readable report of a mismatch: case number, the difference, every drawn input."""
    tol = f"rtol={rtol:g}" + ("" if atol is None else f", atol={atol:g}")
    lines = [f"differential: candidate disagrees with reference on drawn case {number} ({tol})", f"  {what}"]
    lines.append("  drawn inputs:")
    lines.extend(f"    {name} = {describe(value)}" for name, value in case_items(case))
    return "\n".join(lines)
