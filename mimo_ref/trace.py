"""Activation dumps and dump comparison: the tools a port uses to find where it diverges from the reference.

``dump_run`` runs one input through the pipeline from the stage it enters (a sound file, a log-mel, codes,
``input_ids`` or a patch-decoder input) with every :func:`mimo_ref.tap.tap` collecting (jit disabled, exact
lengths, so no tensor carries this port's bucket padding) and writes

- ``OUT.safetensors``: every named tensor, in pipeline order (bfloat16 values are widened to float32);
- ``OUT.json``: the manifest: tensor names in order with shapes and dtypes, the configs, dtype, library
  versions, the input description and the seed.

``compare_dumps`` compares a candidate dump (a port's, often of one component only) with a reference dump: per
tensor the candidate holds, in the reference's order, the shapes, max abs error, relative L2 error and cosine
similarity, or for integer tensors the number of mismatches and the first index that differs. Tensors the
candidate does not hold are listed apart and do not fail it unless asked (``require``, ``only``). The first
failing tensor is the first stage to look at. Tensor names: ``docs/tracing.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from mimo_ref import audio as audio_tok
from mimo_ref import generate, lm, prompts, sampling
from mimo_ref.audio_io import load_audio_24k
from mimo_ref.checkpoint import resolve_checkpoint
from mimo_ref.metrics import cosine, max_abs, mismatches, rel_l2
from mimo_ref.outputs import atomic_outputs
from mimo_ref.tap import collecting, tap
from mimo_ref.text import load_text_tokenizer

log = logging.getLogger(__name__)  # stage messages; the CLI prints them on stderr
FORMAT = "mimo-ref-dump/2"  # 2: patch-decoder logits per channel, unpadded; inactive tokens -1


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("mimo-ref", "jax", "jaxlib", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def to_saveable(value: np.ndarray) -> np.ndarray:
    """Widen dtypes safetensors-numpy cannot store (bfloat16) to float32; keep everything else."""
    if value.dtype.kind == "V" or str(value.dtype) == "bfloat16":
        return value.astype(np.float32)
    return np.ascontiguousarray(value)


STAGE_INPUTS = ("--audio", "--mel", "--codes", "--input-ids", "--local-hidden", "--text")


def compute_dtype(precision: str) -> jnp.dtype:
    """The activation dtype of a precision preset (``float64``, ``bfloat16``; float32 for every other preset)."""
    return {"float64": jnp.float64, "bfloat16": jnp.bfloat16}.get(precision, jnp.float32)


def load_array(path: str | Path, option: str) -> np.ndarray:
    """A ``.npy`` file given to ``option``, with the error in the user's terms."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{option} file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{option} file {path} is not a .npy array ({exc})") from exc


def float_input(array: np.ndarray, option: str, dtype: str) -> np.ndarray:
    """A float input array, finite, as float32 (or float64 in a float64 dump)."""
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{option} holds {array.dtype} values; it must be a float array")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{option} holds NaN or infinite values")
    return array.astype(np.float64 if dtype == "float64" else np.float32)


def int_input(array: np.ndarray, option: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{option} holds {array.dtype} values; it must be an integer array")
    return array.astype(np.int64)


def dump_run(
    *,
    output: Path,
    model=None,
    audio_tokenizer=None,
    dtype: str = "float32",
    text: str | None = None,
    audio: str | None = None,
    mel: str | None = None,
    codes: str | None = None,
    input_ids: str | None = None,
    local_hidden: str | None = None,
    seed: int = 0,
    new_groups: int = 2,
) -> dict:
    """Run an input through the pipeline from the stage it enters, collecting every tap after it; write ``output``
    and its ``.json`` manifest.

    Where a run starts (each option a file; at most one of ``audio``/``mel``/``codes``):

    - ``audio`` (a sound file): ``input.wave``, its log-mel, then as ``mel``;
    - ``mel`` (``.npy`` ``[T, M]``, stored as ``audio.mel``): encoder, RVQ (all levels), then as ``codes`` with
      the first C levels;
    - ``codes`` (``.npy`` ``[levels >= C, T]`` int, the first C levels stored as ``audio.decoder.codes``): the
      decoder and vocoder, and the LM prompt of those codes (padded to a multiple of G by repeating the last frame):
      the ASR prompt, or the audio-understanding prompt when ``text`` is given too;
    - ``input_ids`` (``.npy`` ``[C+1, L]``, stored as ``input.ids``): the LM on that prompt (overrides the prompt of
      the audio stages);
    - ``text`` alone: the LM on the TTS prompt of the text (first official template);
    - ``local_hidden`` (``.npy`` ``[Dl]`` or ``[B, Dl]``, stored as ``lm.local_hidden``): the patch decoder alone,
      greedy.

    The LM part runs ``new_groups`` greedy generation steps, then the patch decoder once more on the prompt's last
    hidden state (greedy), so its taps are present even when no generated group was a speech group.
    """
    from mimo_ref import pipeline

    audio_sources = [opt for opt, v in (("--audio", audio), ("--mel", mel), ("--codes", codes)) if v is not None]
    if len(audio_sources) > 1:
        raise ValueError(f"give at most one of --audio, --mel, --codes (got {' and '.join(audio_sources)})")
    if local_hidden is not None and (audio_sources or text or input_ids):
        raise ValueError("--local-hidden starts at the patch decoder: it takes no other input")
    if not (text or audio_sources or input_ids or local_hidden is not None):
        raise ValueError(f"dump needs an input: one of {', '.join(STAGE_INPUTS)}")
    if new_groups < 1:
        raise ValueError(f"--new-groups must be >= 1, got {new_groups}")
    folder = resolve_checkpoint(model or pipeline.BUNDLED_LM, what="LM checkpoint")
    log.info("loading the LM from %s ...", folder)
    params, cfg, special = lm.load_lm(folder, dtype)
    log.info("running every stage with its taps (jit disabled, so this is the slow part) ...")
    ctx = prompts.prompt_context(load_text_tokenizer(folder), cfg)
    described: dict = {
        "text": text,
        "audio": audio,
        "mel": mel,
        "codes": codes,
        "input_ids": input_ids,
        "local_hidden": local_hidden,
        "new_groups": new_groups,
    }
    configs: dict = {"lm": dataclasses.asdict(cfg)}
    greedy = lm.channel_sampler(sampling.GREEDY, cfg=cfg)
    with collecting() as store:
        if local_hidden is not None:
            hidden = float_input(load_array(local_hidden, "--local-hidden"), "--local-hidden", dtype)
            hidden = hidden[None] if hidden.ndim == 1 else hidden  # [Dl] -> [1, Dl]
            if hidden.ndim != 2 or hidden.shape[1] != cfg.local_dim:
                raise ValueError(
                    f"--local-hidden must be [{cfg.local_dim}] or [B, {cfg.local_dim}] (the model's local_dim), "
                    f"got shape {list(hidden.shape)}"
                )
            hidden = tap("lm.local_hidden", jnp.asarray(hidden, compute_dtype(dtype)))
            keys = jax.random.split(jax.random.key(seed), hidden.shape[0])
            lm.patch_decoder(params, hidden, greedy, keys, cfg=cfg)
            described["prompt"] = "none: patch decoder only"
        else:
            lm_codes = run_audio_stages(
                audio=audio, mel=mel, codes=codes, dtype=dtype, lm_cfg=cfg, configs=configs,
                audio_tokenizer=audio_tokenizer or pipeline.BUNDLED_AUDIO_TOKENIZER,
            )  # fmt: skip
            if input_ids is not None:
                ids = int_input(load_array(input_ids, "--input-ids"), "--input-ids")
                if ids.ndim != 2 or ids.shape[0] != cfg.audio_channels + 1 or ids.shape[1] % cfg.group_size:
                    raise ValueError(
                        f"--input-ids must be [C+1 = {cfg.audio_channels + 1}, L] with L a multiple of "
                        f"G = {cfg.group_size}, got shape {list(ids.shape)}"
                    )
                described["prompt"] = "input_ids file"
            elif lm_codes is not None and text:
                ids = prompts.audio_understanding_prompt(ctx, lm_codes, text).input_ids
                described["prompt"] = "audio understanding (official get_audio_understanding_sft_prompt)"
            elif lm_codes is not None:
                ids = prompts.asr_prompt(ctx, lm_codes, template=0).input_ids
                described["prompt"] = "asr, template 0 (official get_asr_sft_prompt)"
            else:
                ids = prompts.tts_prompt(ctx, text, template=0).input_ids
                described["prompt"] = "tts, template 0 (official get_tts_sft_prompt)"
            tap("input.ids", ids)
            for _ in generate.generate_stream(
                params,
                cfg,
                special,
                ids,
                max_new_groups=new_groups,
                text_sampler=sampling.GREEDY,
                speech_sampler=sampling.GREEDY,
                key=jax.random.key(seed),
                prompt_bucket=1,  # no left padding: every tensor has the prompt's true length
            ):
                pass
            # The patch decoder runs inside generation only for <|empty|> groups; run it once on the prompt's last
            # hidden state too, so every dump holds its per-step hidden states, logits and tokens.
            keys = jax.random.split(jax.random.key(seed), 1)
            lm.patch_decoder(params, store["lm.local_hidden"], greedy, keys, cfg=cfg)
    tensors = {name: to_saveable(value) for name, value in store.items()}
    output = Path(output)
    manifest = {
        "format": FORMAT,
        "tensors": [{"name": n, "shape": list(v.shape), "dtype": str(v.dtype)} for n, v in tensors.items()],
        "dtype": dtype,
        "seed": seed,
        "input": described,
        "configs": configs,
        "versions": versions(),
    }
    log.info("writing %d tensors to %s ...", len(tensors), output)
    # both files or neither, each complete (temporary names renamed into place; missing folders created)
    with atomic_outputs(output, output.with_suffix(".json")) as (tensors_tmp, manifest_tmp):
        # the order travels inside the file too: a dump copied without its manifest keeps its pipeline order
        save_file(tensors, str(tensors_tmp), metadata={"format": FORMAT, "order": json.dumps(list(tensors))})
        manifest_tmp.write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def run_audio_stages(*, audio, mel, codes, dtype: str, lm_cfg, configs: dict, audio_tokenizer) -> np.ndarray | None:
    """The tokenizer stages from whichever input is given (inside :func:`collecting`); -> the LM's codes ``[C, T]``
    padded to a multiple of G, or None when no audio input is given."""
    if audio is None and mel is None and codes is None:
        return None
    a_params, a_cfg = audio_tok.load_audio_tokenizer(audio_tokenizer, dtype)
    configs["audio_tokenizer"] = dataclasses.asdict(a_cfg)
    c = lm_cfg.audio_channels
    if codes is None:
        if audio is not None:
            wave, _ = load_audio_24k(audio)
            tap("input.wave", wave)
            mels = np.asarray(audio_tok.log_mel(wave, a_cfg, sample_rate=a_cfg.sampling_rate))  # tapped as audio.mel
        else:
            mels = float_input(load_array(mel, "--mel"), "--mel", dtype)
            if mels.ndim != 2 or mels.shape[1] != a_cfg.n_mels:
                raise ValueError(f"--mel must be [T, M = {a_cfg.n_mels}], got shape {list(mels.shape)}")
            tap("audio.mel", mels)
        lm_codes = audio_tok.encode(a_params, mels, [mels.shape[0]], cfg=a_cfg).codes[:c]  # [Q, T] -> [C, T]
    else:
        given = int_input(load_array(codes, "--codes"), "--codes")
        if given.ndim != 2 or given.shape[0] < c or given.shape[1] < 1:
            raise ValueError(
                f"--codes must be [levels >= C = {c}, T >= 1] (the first C levels are decoded and prompted), "
                f"got shape {list(given.shape)}"
            )
        lm_codes = given[:c]
    tap("audio.decoder.codes", lm_codes)
    audio_tok.decode(a_params, lm_codes, cfg=a_cfg)
    return prompts.pad_codes_to_group(lm_codes, lm_cfg.group_size)


def read_dump(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Tensors of a dump and their pipeline order: the manifest's order when a manifest is beside it, else the
    order stored in the file's metadata (``dump_run`` writes it), else the file's own order (safetensors sorts by
    dtype, then name). A port's own dump needs no manifest: a safetensors file of tensors named as
    ``docs/tracing.md`` says.

    Raises FileNotFoundError for a missing file and ValueError for a file that is not a safetensors dump.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dump {path} does not exist")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a dump: it cannot be read as a safetensors file ({exc})") from exc
    if not tensors:
        raise ValueError(f"{path} is not a dump: it holds no tensors")
    with safe_open(str(path), "np") as f:
        metadata = f.metadata() or {}
    order = json.loads(metadata["order"]) if "order" in metadata else list(tensors)  # else the file's (dtype) order
    order = [n for n in order if n in tensors] + [n for n in tensors if n not in set(order)]
    manifest = path.with_suffix(".json")
    if manifest.is_file():
        try:
            listed = [t["name"] for t in json.loads(manifest.read_text())["tensors"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{manifest} is not a dump manifest (no readable 'tensors' list: {exc!r})") from exc
        order = [n for n in listed if n in tensors] + [n for n in tensors if n not in set(listed)]
    return tensors, order


def is_exact(array: np.ndarray) -> bool:
    """Integer and boolean tensors (ids, codes, tokens) are compared for equality, not within a tolerance."""
    return np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_


def compare_tensor(name: str, ref: np.ndarray, cand: np.ndarray, *, rtol: float, atol: float) -> dict:
    """One report row. Floats pass with relative L2 <= rtol or max abs <= atol (and the same inf/nan pattern);
    integer and boolean reference tensors must be equal (the candidate's values compared as they are)."""
    row: dict = {
        "name": name,
        "shape": list(ref.shape),
        "candidate_shape": list(cand.shape),
        "dtype": str(ref.dtype),
        "candidate_dtype": str(cand.dtype),
    }
    if ref.shape != cand.shape:
        return row | {"status": "shape mismatch", "passed": False}
    if is_exact(ref):
        diff = np.argwhere(ref != cand)
        first = diff[0].tolist() if len(diff) else None
        return row | {
            "mismatches": mismatches(cand, ref),
            "size": int(ref.size),
            "first_divergence": first,
            "passed": not len(diff),
            "status": "" if not len(diff) else "values differ",
        }
    a = ref.astype(np.float64)
    b = cand.astype(np.float64)
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    same_nonfinite = bool(np.array_equal(finite_a, finite_b)) and bool(
        np.all((a[~finite_a] == b[~finite_a]) | (np.isnan(a[~finite_a]) & np.isnan(b[~finite_a])))
    )
    finite = finite_a & finite_b
    a0 = np.where(finite, a, 0.0)  # non-finite entries (-inf logits) are compared by the pattern check above
    b0 = np.where(finite, b, 0.0)
    rel, largest = rel_l2(b0, a0), max_abs(b0, a0)  # the reference is the denominator
    passed = same_nonfinite and (rel <= rtol or largest <= atol)
    if not same_nonfinite:
        status = "inf/nan pattern differs"
    elif not passed:
        status = "beyond tolerance"
    else:
        status = ""
    return row | {"max_abs": largest, "rel_l2": rel, "cosine": cosine(b0, a0), "passed": passed, "status": status}


def selected(name: str, only: Sequence[str]) -> bool:
    return not only or any(name.startswith(prefix) for prefix in only)


def compare_dumps(
    reference: Path,
    candidate: Path,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    only: Sequence[str] = (),
    require: bool = False,
) -> dict:
    """Compare a candidate dump (a port's, possibly partial) with a reference dump, in the reference's order.

    Every reference tensor the candidate also holds is compared (:func:`compare_tensor`); the first of them that
    fails is the first divergence. Reference tensors the candidate does not hold are listed as ``absent`` and do
    not fail the comparison (a port of one component holds only that component's tensors), unless ``require``
    (every reference tensor must be present) or ``only`` (name prefixes: only the reference tensors under them are
    considered, and each of those must be present). A candidate sharing no tensor with the selection fails.

    -> ``{"rows", "absent", "extra", "first_failure", "passed", "required", ...}``; ``extra``: candidate tensors
    the reference does not hold (not compared).
    """
    ref, order = read_dump(reference)
    cand, _ = read_dump(candidate)
    names = [n for n in order if selected(n, only)]
    if only and not names:
        raise ValueError(f"no tensor of the reference {reference} starts with {' or '.join(only)}")
    required = require or bool(only)
    with np.errstate(all="ignore"):  # inf/nan entries are masked explicitly; no warning may reach the report
        rows = [compare_tensor(n, ref[n], cand[n], rtol=rtol, atol=atol) for n in names if n in cand]
    absent = [n for n in names if n not in cand]
    extra = [n for n in cand if n not in ref]
    first = next((r["name"] for r in rows if not r["passed"]), None)
    return {
        "reference": str(reference),
        "candidate": str(candidate),
        "rtol": rtol,
        "atol": atol,
        "only": list(only),
        "required": required,
        "rows": rows,
        "absent": absent,
        "extra": extra,
        "first_failure": first,
        "passed": first is None and bool(rows) and not (required and absent),
    }


def collapse_repeats(names: list[str]) -> list[str]:
    """``a``, ``a#1``, ``a#2`` -> ``a (x3)``: a short list of tensor names for the report."""
    counts: dict[str, int] = {}
    for name in names:
        base = name.partition("#")[0]
        counts[base] = counts.get(base, 0) + 1
    return [base if n == 1 else f"{base} (x{n})" for base, n in counts.items()]


def format_shape(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def format_report(report: dict, *, fmt: str = "table") -> str:
    """The comparison as an aligned table (reference order, first divergence marked) or as JSON.

    Columns: float tensors show max abs error, relative L2 error and cosine similarity; integer tensors show the
    number of mismatching values (and the first index that differs). Absent and extra tensors follow the table.
    """
    if fmt == "json":
        return json.dumps(report, indent=2)
    header = f"{'tensor':44} {'shape':16} {'max abs':>10} {'rel L2':>10} {'cosine':>9} {'mismatches':>12}  result"
    lines = [header]
    for row in report["rows"]:
        floats = f"{'':>10} {'':>10} {'':>9}"
        ints = f"{'':>12}"
        if "mismatches" in row:
            ints = f"{row['mismatches']:>12d}"
        elif "rel_l2" in row:
            floats = f"{row['max_abs']:10.3e} {row['rel_l2']:10.3e} {row['cosine']:9.6f}"
        if row["passed"]:
            result = "ok"
        elif row["status"] == "shape mismatch":
            result = (
                f"FAIL shape mismatch: reference {format_shape(row['shape'])} {row['dtype']}, "
                f"candidate {format_shape(row['candidate_shape'])} {row['candidate_dtype']}"
            )
        elif row.get("first_divergence") is not None:
            result = f"FAIL {row['mismatches']} of {row['size']} differ, first at {row['first_divergence']}"
        else:
            result = "FAIL " + row["status"]
        marker = "  <== first divergence" if row["name"] == report["first_failure"] else ""
        lines.append(f"{row['name']:44} {format_shape(row['shape']):16} {floats} {ints}  {result}{marker}")
    if report["absent"]:
        how = "required: FAIL" if report["required"] else "not compared"
        absent = ", ".join(collapse_repeats(report["absent"]))
        lines.append(f"absent from the candidate ({len(report['absent'])}, {how}): {absent}")
    if report["extra"]:
        lines.append(f"only in the candidate (not compared): {', '.join(collapse_repeats(report['extra']))}")
    if not report["rows"]:
        verdict = "FAIL: the candidate holds none of the reference's tensors (names as in docs/tracing.md?)"
    elif report["first_failure"] is not None:
        verdict = f"first diverging tensor: {report['first_failure']}"
    elif report["required"] and report["absent"]:
        verdict = f"FAIL: {len(report['absent'])} required tensors are absent"
    else:
        verdict = "all compared tensors agree"
    lines.append(
        f"{len(report['rows'])} tensors compared, {len(report['absent'])} absent "
        f"(rtol {report['rtol']:g}, atol {report['atol']:g}): {verdict}"
    )
    return "\n".join(lines)
