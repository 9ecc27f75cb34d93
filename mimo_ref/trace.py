"""Activation dumps and dump comparison: the tools a port uses to find where it diverges from the reference.

``dump_run`` runs one input through the pipeline with every :func:`mimo_ref.tap.tap` collecting (jit disabled,
exact lengths, so no tensor carries this port's padding) and writes

- ``OUT.safetensors``: every named tensor, in pipeline order (bfloat16 values are widened to float32);
- ``OUT.json``: the manifest: tensor names in order with shapes and dtypes, the configs, dtype, library
  versions, the input description and the seed.

``compare_dumps`` reads two dumps and reports, per tensor in the reference's order: shape match, max abs error,
relative L2 error, cosine similarity, and for integer tensors the number of mismatches and the first index of
divergence. The first failing tensor is the first stage to look at. Tensor names: ``docs/tracing.md``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from mimo_ref import audio as audio_tok
from mimo_ref import generate, lm, prompts, sampling
from mimo_ref.audio_io import load_audio_24k
from mimo_ref.checkpoint import resolve_checkpoint
from mimo_ref.tap import collecting, tap
from mimo_ref.text import load_text_tokenizer

FORMAT = "mimo-ref-dump/1"


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


def dump_run(
    *,
    output: Path,
    model=None,
    audio_tokenizer=None,
    dtype: str = "float32",
    text: str | None = None,
    audio: str | None = None,
    input_ids: str | None = None,
    seed: int = 0,
    new_groups: int = 2,
) -> dict:
    """Run an input through the pipeline, collecting every tap; write ``output`` and its ``.json`` manifest.

    Stages, in order: with ``audio``: the wave's log-mel, encoder, RVQ (all levels), and the decoder + vocoder on
    the LM's first C code levels; then the LM on a prompt: ``input_ids`` (a ``.npy`` of ``[C+1, L]``) if given,
    else the ASR prompt of the audio (or the audio-understanding prompt when ``text`` is given too), else the TTS
    prompt of ``text`` (first official template); then ``new_groups`` greedy generation steps; then the patch
    decoder once more on the prompt's last hidden state (greedy), so its taps are present even when no generated
    group was a speech group.
    """
    from mimo_ref import pipeline

    if not (text or audio or input_ids):
        raise ValueError("dump needs an input: --text, --audio and/or --input-ids")
    if new_groups < 1:
        raise ValueError(f"--new-groups must be >= 1, got {new_groups}")
    folder = resolve_checkpoint(model or pipeline.BUNDLED_LM, what="LM checkpoint")
    params, cfg, special = lm.load_lm(folder, dtype)
    ctx = prompts.prompt_context(load_text_tokenizer(folder), cfg)
    described: dict = {"text": text, "audio": audio, "input_ids": input_ids, "new_groups": new_groups}
    configs: dict = {"lm": dataclasses.asdict(cfg)}
    with collecting() as store:
        codes = None
        if audio is not None:
            a_params, a_cfg = audio_tok.load_audio_tokenizer(audio_tokenizer or pipeline.BUNDLED_AUDIO_TOKENIZER, dtype)
            configs["audio_tokenizer"] = dataclasses.asdict(a_cfg)
            wave, _ = load_audio_24k(audio)
            tap("input.wave", wave)
            mels = audio_tok.log_mel(wave, a_cfg, sample_rate=a_cfg.sampling_rate)
            encoded = audio_tok.encode(a_params, np.asarray(mels), [mels.shape[0]], cfg=a_cfg)
            audio_tok.decode(a_params, encoded.codes[: cfg.audio_channels], cfg=a_cfg)
            codes = prompts.pad_codes_to_group(encoded.codes[: cfg.audio_channels], cfg.group_size)
        if input_ids is not None:
            ids = np.load(input_ids)
            described["prompt"] = "input_ids file"
        elif codes is not None and text:
            ids = prompts.audio_understanding_prompt(ctx, codes, text).input_ids
            described["prompt"] = "audio understanding (official get_audio_understanding_sft_prompt)"
        elif codes is not None:
            ids = prompts.asr_prompt(ctx, codes, template=0).input_ids
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
        greedy = lm.channel_sampler(sampling.GREEDY, cfg=cfg)
        lm.patch_decoder(params, store["lm.local_hidden"], greedy, jax.random.split(jax.random.key(seed), 1), cfg=cfg)
    tensors = {name: to_saveable(value) for name, value in store.items()}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(output))
    manifest = {
        "format": FORMAT,
        "tensors": [{"name": n, "shape": list(v.shape), "dtype": str(v.dtype)} for n, v in tensors.items()],
        "dtype": dtype,
        "seed": seed,
        "input": described,
        "configs": configs,
        "versions": versions(),
    }
    output.with_suffix(".json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def read_dump(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Tensors of a dump and their pipeline order (from the manifest beside it; file order otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dump {path} does not exist")
    tensors = load_file(str(path))
    manifest = path.with_suffix(".json")
    if manifest.is_file():
        order = [t["name"] for t in json.loads(manifest.read_text())["tensors"]]
    else:
        order = list(tensors)
    return tensors, order


def compare_tensor(name: str, ref: np.ndarray, cand: np.ndarray, *, rtol: float, atol: float) -> dict:
    """One report row. Floats pass with relative L2 <= rtol or max abs <= atol; integers must be equal."""
    row: dict = {"name": name, "shape": list(ref.shape), "candidate_shape": list(cand.shape)}
    if ref.shape != cand.shape:
        return row | {"status": "shape mismatch", "passed": False}
    if np.issubdtype(ref.dtype, np.integer) or ref.dtype == np.bool_:
        diff = np.argwhere(ref != cand)
        first = diff[0].tolist() if len(diff) else None
        return row | {"mismatches": int(len(diff)), "first_divergence": first, "passed": not len(diff), "status": ""}
    a = ref.astype(np.float64)
    b = cand.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    same_nonfinite = bool(np.array_equal(np.isfinite(a), np.isfinite(b))) and bool(np.all(a[~finite] == b[~finite]))
    err = np.abs(np.where(finite, a, 0.0) - np.where(finite, b, 0.0))  # -inf padding of logits compared above
    norm_a = np.linalg.norm(np.where(finite, a, 0.0))
    rel = float(np.linalg.norm(err) / norm_a) if norm_a > 0 else float(np.linalg.norm(err))
    norm_b = np.linalg.norm(np.where(finite, b, 0.0))
    dot = float(np.sum(np.where(finite, a * b, 0.0)))
    cosine = dot / (norm_a * norm_b) if norm_a > 0 and norm_b > 0 else float(norm_a == norm_b)
    max_abs = float(err.max()) if err.size else 0.0
    passed = same_nonfinite and (rel <= rtol or max_abs <= atol)
    status = "" if same_nonfinite else "inf/nan pattern differs"
    return row | {"max_abs": max_abs, "rel_l2": rel, "cosine": cosine, "passed": passed, "status": status}


def compare_dumps(reference: Path, candidate: Path, *, rtol: float = 1e-5, atol: float = 0.0) -> dict:
    """Compare two dumps tensor by tensor in the reference's pipeline order.

    -> ``{"rows": [...], "missing": [...], "extra": [...], "first_failure": name | None, "passed": bool}``.
    """
    ref, order = read_dump(reference)
    cand, _ = read_dump(candidate)
    rows = []
    missing = []
    for name in order:
        if name not in cand:
            missing.append(name)
            rows.append({"name": name, "shape": list(ref[name].shape), "status": "missing", "passed": False})
            continue
        rows.append(compare_tensor(name, ref[name], cand[name], rtol=rtol, atol=atol))
    extra = [n for n in cand if n not in ref]
    first = next((r["name"] for r in rows if not r["passed"]), None)
    return {
        "reference": str(reference),
        "candidate": str(candidate),
        "rtol": rtol,
        "atol": atol,
        "rows": rows,
        "missing": missing,
        "extra": extra,
        "first_failure": first,
        "passed": first is None,
    }


def format_report(report: dict, *, fmt: str = "table") -> str:
    """The comparison as an aligned table (pipeline order, first failure marked) or as JSON."""
    if fmt == "json":
        return json.dumps(report, indent=2)
    lines = [f"{'tensor':44} {'shape':18} {'max abs':>10} {'rel L2':>10} {'cosine':>9}  result"]
    for row in report["rows"]:
        shape = "x".join(str(d) for d in row["shape"]) or "scalar"
        if "mismatches" in row:
            errs = f"{row['mismatches']:>10d} {'':>10} {'':>9}"
            if row["first_divergence"] is not None:
                errs += f"  first diff at {row['first_divergence']}"
        elif "rel_l2" in row:
            errs = f"{row['max_abs']:10.3e} {row['rel_l2']:10.3e} {row['cosine']:9.6f}"
        else:
            errs = f"{'':>10} {'':>10} {'':>9}"
        result = "ok" if row["passed"] else "FAIL " + row.get("status", "")
        marker = "  <== first divergence" if row["name"] == report["first_failure"] else ""
        lines.append(f"{row['name']:44} {shape:18} {errs}  {result}{marker}")
    if report["extra"]:
        lines.append(f"only in candidate: {', '.join(report['extra'])}")
    verdict = "all tensors agree" if report["passed"] else f"first diverging tensor: {report['first_failure']}"
    lines.append(
        f"{len(report['rows'])} tensors compared (rtol {report['rtol']:g}, atol {report['atol']:g}): {verdict}"
    )
    return "\n".join(lines)
