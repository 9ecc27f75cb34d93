"""``mimo-ref verify``: every golden case of a fixture set, one table row each.

A fixture set (``tests/fixtures/golden/README.md``; the bundled copy by default) holds what the official PyTorch
implementation computed on small random-weight checkpoints. Each key of its ``expected`` files (and each prompt,
resample output and end-to-end run) becomes one :class:`Row`; a key that no check knows fails, so a new fixture
cannot be skipped silently. Checks and tolerances are those of the golden tests (``tests/golden/``):

- ``lm/``: ``f32.*`` / ``f64.*`` / ``bf16.*`` floats by relative L2 error <= 1e-5 / 1e-6 / 3e-2; greedy
  patch-decoder tokens and generated ids exact (length included); ``sampler.*.processed``: the same -inf entries
  and relative L2 <= 1e-6 on the rest.
- ``audio_tokenizer/``: floats to 1e-5 / 1e-6 / 5e-2 (bfloat16 is a loose reference), mel 1e-5, RVQ decode 1e-6,
  codes and lengths exact.
- ``audio_tokenizer/streaming*``: one row per streaming case and run (``f32`` / ``f64``): the official emitted
  pattern and sample counts exact, every chunk within 1e-5 / 1e-6; ``full`` one-shot decodes within 1e-5.
- ``lm/generate_*``: also run in float64 (``[float64 generation]`` rows): the same ids.
- ``pipeline/prompts``: text-only prompts exact; prompts with audio exact in layout (codes read back from the
  fixture) and exact when built from the wavs by the tokenizer in the ``official`` precision (the wrapper's
  bf16-rounded weights and buffers, float32 math; see ``docs/numerics.md``).
- ``pipeline/resample``: relative L2 <= 1e-5 and the exact length.
- ``pipeline/expected`` end-to-end runs, in the ``official`` precision: the generated ids exact, the decoded text
  exact, the TTS waveform after a 16-bit PCM round trip within 1 LSB of the official file.

float64 cases run inside ``jax.enable_x64(True)``; x64 is never switched on globally. Each checkpoint is loaded
once per dtype and run; results are shared by the rows that read them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import json
import math
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import soundfile as sf
from safetensors import safe_open
from safetensors.numpy import load_file

from mimo_ref import audio, generate, lm, pipeline, prompts, sampling
from mimo_ref.audio import streaming
from mimo_ref.audio_io import load_audio_24k, resample
from mimo_ref.bundled import BUNDLED_GOLDEN, OFFICIAL_CALLS
from mimo_ref.metrics import max_abs, mismatches, rel_l2
from mimo_ref.text import load_text_tokenizer

DTYPES = {"f32": "float32", "f64": "float64", "bf16": "bfloat16"}
# The official wrapper's precision (bf16-rounded weights and tokenizer buffers, float32 math): the pipeline runs.
OFFICIAL = "official"
PRECISIONS = DTYPES | {OFFICIAL: OFFICIAL}
LM_TOL = {"f32": 1e-5, "f64": 1e-6, "bf16": 3e-2}
AUDIO_TOL = {"f32": 1e-5, "f64": 1e-6, "bf16": 5e-2}
EXACT_RUNS = ("f32", "f64")  # runs whose integer outputs must match exactly (bf16 is a loose reference)
LM_FLOATS = ("input_embeds", "hidden_states", "text_logits", "local_hidden_states")
SAMPLER_TOL = 1e-6
MEL_TOL = 1e-5
RVQ_TOL = 1e-6
RESAMPLE_TOL = 1e-5


# ---------------------------------------------------------------------------------------------------------------
# The official calls behind the fixtures (prompt cases and the lm/ generate runs)
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def official_calls() -> types.ModuleType:
    """``tests/fixtures/official_calls.py``: the official prompt-builder call of every prompt case (fixture data
    in Python, kept with the fixtures; see that file). Loaded by path from the source checkout, like the bundled
    fixture set itself."""
    if not OFFICIAL_CALLS.is_file():
        raise FileNotFoundError(
            f"the official call table of the golden fixtures is missing ({OFFICIAL_CALLS}); "
            "run mimo-ref verify from a source checkout (pip install -e .)"
        )
    spec = importlib.util.spec_from_file_location("mimo_ref_official_calls", OFFICIAL_CALLS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def extract_audio(ids: np.ndarray, ctx: prompts.PromptContext) -> list[np.ndarray]:
    """The codes ``[C, T]`` of every audio argument in a prompt ``[C+1, L]``, in order.

    A wrapped audio is the speech groups between ``<|sosp|>`` and ``<|eosp|>``; a streamed one is all speech
    groups between ``<|sostm|>`` and ``<|eostm|>`` (its chunks are split by transcript groups).
    """
    g, s = ctx.group_size, ctx.special
    text = ids[0, ::g]  # [L] -> [L / G]
    found, current, inside = [], [], None
    for k, token in enumerate(text):
        if token == s.empty:
            if inside is None:
                raise ValueError(f"speech group {k} outside sosp/eosp and sostm/eostm")
            current.append(ids[1:, k * g : (k + 1) * g])
        elif token in (s.sosp, s.sostm):
            inside, current = token, []
        elif token in (s.eosp, s.eostm) and inside is not None:
            if current:  # a trailing `<|sostm|>` that opens the answer has no end and no audio
                found.append(np.concatenate(current, axis=1))
            inside = None
    return found


def official_prompt(name: str, ctx: prompts.PromptContext, golden_ids: np.ndarray, templates) -> prompts.Prompt:
    """The prompt of case ``name`` rebuilt from its official call; audio codes (if any) read from ``golden_ids``.

    This pins every text id, -100 filler, empty id and wrapper group exactly, independently of the tokenizer.
    """
    calls = official_calls()
    if name in calls.TEXT_CASES:
        return calls.text_call(name, ctx, templates)
    found = extract_audio(golden_ids, ctx)
    arguments = calls.AUDIO_CASES[name]
    if len(found) != len(arguments):
        raise ValueError(f"{name}: {len(found)} audio segments in the golden prompt, the call has {len(arguments)}")
    codes = {arg: c for (arg, _), c in zip(arguments, found, strict=True)}
    return calls.audio_call(name, ctx, codes, templates)


def fixture_generate(params, cfg, special, inputs: dict, *, with_stop: bool) -> np.ndarray:
    """The official ``generate()`` run of the ``lm/`` fixtures: greedy samplers on ``generate_prompt`` with
    ``generate_params = (max_new_groups, min_length, stop_token)``; ``min_length`` counts the prompt's groups.
    Without ``with_stop`` no stop token is given (``generate_greedy_ids_nostop``). -> ids ``[C+1, T_total*G]``."""
    prompt = inputs["generate_prompt"]
    max_new, min_length, stop_token = (int(v) for v in inputs["generate_params"])
    prompt_groups = prompt.shape[-1] // cfg.group_size
    result = generate.generate(
        params,
        cfg,
        special,
        prompt,
        max_new_groups=max_new,
        min_new_groups=max(0, min_length - prompt_groups) if with_stop else 0,
        stop_tokens=[stop_token] if with_stop else [],
    )
    return result.sequence(0)


@dataclasses.dataclass(frozen=True)
class Row:
    """One verified case.

    kind: ``float`` (max_abs = max |ours - official|, rel_err = relative L2 error, passes if rel_err <= tol),
    ``exact`` (max_abs = number of mismatching entries, 0 to pass), ``agreement`` (max_abs = differing codes,
    rel_err = their fraction, passes if <= tol), ``decisions`` (max_abs = confident decisions that disagree,
    rel_err = fraction of all decisions that disagree, tol = the margin), ``text`` (max_abs = 0 if equal, else 1),
    ``missing`` (a fixture key no check knows: fails), ``error`` (the check raised; the note holds the error).
    NaN / None where a column does not apply.
    """

    case: str
    kind: str
    max_abs: float
    rel_err: float | None
    tol: float | None
    passed: bool
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Case:
    """A named check, run only when selected (``--only``)."""

    name: str
    run: Callable[[], Row]


# ----------------------------------------------------------------------------------------------------------------
# Measurements


def float_row(case: str, actual, expected, tol: float, note: str = "") -> Row:
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return Row(case, "float", math.nan, None, tol, False, f"shape {actual.shape} != official {expected.shape}")
    err = rel_l2(actual, expected)
    return Row(case, "float", max_abs(actual, expected), err, tol, bool(err <= tol), note)


def exact_row(case: str, actual, expected, note: str = "") -> Row:
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return Row(case, "exact", math.nan, None, 0.0, False, f"shape {actual.shape} != official {expected.shape}")
    wrong = mismatches(actual, expected)
    if wrong and not note:
        note = f"first mismatch at {np.argwhere(actual != expected)[0].tolist()}"
    return Row(case, "exact", float(wrong), None, 0.0, wrong == 0, note)


# ----------------------------------------------------------------------------------------------------------------
# A fixture set, loaded lazily: every array file, checkpoint and run is computed once per `run_all` call.


@dataclasses.dataclass(frozen=True)
class Golden:
    """A fixture set at ``root`` and the memo of what was loaded or computed from it (one per ``run_all``)."""

    root: Path
    memo: dict = dataclasses.field(default_factory=dict)

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def arrays(self, relative: str) -> dict[str, np.ndarray]:
        return self.get(f"file:{relative}", lambda: load_file(str(self.root / relative)))

    def keys(self, relative: str) -> list[str]:
        with safe_open(str(self.root / relative), framework="numpy") as f:
            return sorted(f.keys())

    @property
    def cases_json(self) -> dict:
        return self.get("cases", lambda: json.loads((self.root / "pipeline" / "cases.json").read_text("utf-8")))


def x64(prefix: str):
    return jax.enable_x64(True) if prefix == "f64" else contextlib.nullcontext()


_lm_forward = jax.jit(lm.forward, static_argnames=("cfg", "empty_id"))


def lm_model(g: Golden, prefix: str):
    """(params, cfg, special) of ``lm/`` in the dtype of run ``prefix`` (use inside ``x64(prefix)``)."""
    return g.get(f"lm:{prefix}", lambda: lm.load_lm(g.root / "lm", PRECISIONS[prefix]))


def lm_run(g: Golden, prefix: str) -> dict[str, np.ndarray]:
    """Official-style forward + greedy patch decoder on ``inputs:embeds_input_ids``, as numpy (bf16 as float32)."""

    def compute():
        with x64(prefix):
            params, cfg, special = lm_model(g, prefix)
            ids = jnp.asarray(g.arrays("lm/inputs.safetensors")["embeds_input_ids"])
            embeds, hidden, logits, local_hidden = _lm_forward(params, ids, cfg=cfg, empty_id=special.empty)
            keys = jax.random.split(jax.random.key(0), ids.shape[0])
            tokens = lm.patch_decoder(params, local_hidden, lm.channel_sampler(sampling.GREEDY, cfg=cfg), keys, cfg=cfg)
            out = {"input_embeds": embeds, "hidden_states": hidden, "text_logits": logits[:, None]}
            out["local_hidden_states"] = local_hidden[:, None]
            # bfloat16 results are compared as float32, like the official bf16 run's saved outputs
            out = {k: np.asarray(v.astype(jnp.float32) if v.dtype == jnp.bfloat16 else v) for k, v in out.items()}
            return out | {"local_tokens_greedy": np.asarray(tokens)}

    return g.get(f"lm_run:{prefix}", compute)


def lm_generate(g: Golden, with_stop: bool, prefix: str = "f32") -> np.ndarray:
    """The official ``generate()`` with greedy samplers on ``inputs:generate_prompt`` (see the fixture README),
    run in the precision of ``prefix`` (the official run was float32; float64 must give the same ids)."""

    def compute():
        with x64(prefix):
            params, cfg, special = lm_model(g, prefix)
            return fixture_generate(params, cfg, special, g.arrays("lm/inputs.safetensors"), with_stop=with_stop)

    return g.get(f"generate:{with_stop}:{prefix}", compute)


def lm_float_row(g: Golden, key: str, name: str) -> Row:
    prefix, rest = key.split(".", 1)
    return float_row(name, lm_run(g, prefix)[rest], g.arrays("lm/expected.safetensors")[key], LM_TOL[prefix])


def lm_tokens_row(g: Golden, key: str, name: str) -> Row:
    prefix = key.split(".", 1)[0]
    return exact_row(name, lm_run(g, prefix)["local_tokens_greedy"], g.arrays("lm/expected.safetensors")[key])


def generate_row(g: Golden, key: str, name: str, prefix: str = "f32") -> Row:
    got = lm_generate(g, with_stop=key == "generate_greedy_ids", prefix=prefix)
    want = g.arrays("lm/expected.safetensors")[key]
    note = f"{got.shape[1]} columns, official {want.shape[1]}" if got.shape != want.shape else ""
    return exact_row(name, got, want, note)


def lm_cases(g: Golden) -> list[Case]:
    cases = []
    for key in g.keys("lm/expected.safetensors"):
        name = f"lm/{key}"
        head, _, rest = key.partition(".")
        if head in DTYPES and rest in LM_FLOATS:
            check = lm_float_row
        elif head in EXACT_RUNS and rest == "local_tokens_greedy":
            check = lm_tokens_row
        elif key in ("generate_greedy_ids_nostop", "generate_greedy_ids"):
            check = generate_row
            f64_name = f"{name} [float64 generation]"
            cases.append(Case(f64_name, functools.partial(generate_row, g, key, f64_name, "f64")))
        elif re.fullmatch(r"sampler\.\w+\.processed", key):
            check = sampler_row
        else:
            check = missing_row
        cases.append(Case(name, functools.partial(check, g, key, name)))
    return cases


def sampler_row(g: Golden, key: str, name: str) -> Row:
    index, want = key.split(".")[1], g.arrays("lm/expected.safetensors")[key]
    inputs = g.arrays("lm/inputs.safetensors")
    temperature, top_k, top_p = (float(v) for v in inputs[f"sampler.{index}.params"])  # -1 = unset
    sampler = sampling.SamplerConfig(
        do_sample=True,
        temperature=None if temperature == -1 else temperature,
        top_k=None if top_k == -1 else int(top_k),
        top_p=None if top_p == -1 else top_p,
    )
    got = np.asarray(sampling.process_logits(jnp.asarray(inputs["sampler_scores"]), sampler))
    if got.shape != want.shape:
        return Row(name, "float", math.nan, None, SAMPLER_TOL, False, f"shape {got.shape} != official {want.shape}")
    pattern = int(np.sum(np.isneginf(got) != np.isneginf(want)))
    finite = ~np.isneginf(want)
    row = float_row(name, got[finite], want[finite], SAMPLER_TOL)
    if pattern:
        return dataclasses.replace(row, passed=False, note=f"{pattern} entries differ in being -inf")
    return row


def missing_row(g: Golden, key: str, name: str) -> Row:
    return Row(name, "missing", math.nan, None, None, False, "no check knows this fixture key")


# ----------------------------------------------------------------------------------------------------------------
# Audio tokenizer


def audio_model(g: Golden, prefix: str):
    """(params, cfg) of ``audio_tokenizer/`` in the dtype of run ``prefix`` (use inside ``x64(prefix)``)."""
    return g.get(f"audio:{prefix}", lambda: audio.load_audio_tokenizer(g.root / "audio_tokenizer", PRECISIONS[prefix]))


def audio_encode(g: Golden, prefix: str, what: str):
    """EncodeResult of one segment (``what`` = its index) or of all segments packed (``what`` = "packed")."""

    def compute():
        exp = g.arrays("audio_tokenizer/expected.safetensors")
        if what == "packed":
            lens = [int(n) for n in g.arrays("audio_tokenizer/inputs.safetensors")["packed.lens"]]
            mels = np.concatenate([exp[f"mel.{i}"] for i in range(len(lens))], axis=0)  # S x [T_i, M] -> [T, M]
        else:
            mels = exp[f"mel.{what}"]  # the official mel of that wave, as get_features was fed
            lens = [mels.shape[0]]
        with x64(prefix):
            params, cfg = audio_model(g, prefix)
            return audio.encode(params, mels, lens, cfg=cfg)

    return g.get(f"encode:{prefix}:{what}", compute)


def audio_decode(g: Golden, prefix: str):
    def compute():
        inputs = g.arrays("audio_tokenizer/inputs.safetensors")
        # the bf16 run has no codes of its own in inputs: it decoded the float32 run's codes
        codes = inputs.get(f"{prefix}.decode.codes", inputs["f32.decode.codes"])
        with x64(prefix):
            params, cfg = audio_model(g, prefix)
            return audio.decode(params, codes, cfg=cfg), codes.shape[1] * cfg.samples_per_code

    return g.get(f"decode:{prefix}", compute)


ENCODE_KEY = re.compile(r"(\w+)\.(?:single\.(\d+)|packed)\.(codes|output_length|features|quantized)")
ENCODE_FIELD = {"codes": "codes", "output_length": "lengths", "features": "features", "quantized": "quantized"}


def audio_expected(g: Golden, key: str) -> np.ndarray:
    return g.arrays("audio_tokenizer/expected.safetensors")[key]


def mel_row(g: Golden, key: str, name: str) -> Row:
    _, cfg = audio_model(g, "f32")
    wave = g.arrays("audio_tokenizer/inputs.safetensors")[key.replace("mel.", "wave.")]
    return float_row(name, audio.log_mel(wave, cfg, sample_rate=cfg.sampling_rate), audio_expected(g, key), MEL_TOL)


def encode_row(g: Golden, key: str, name: str) -> Row:
    """``{prefix}.single.{i}.*`` (segment i alone) or ``{prefix}.packed.*`` (all segments in one call)."""
    prefix, index, out = ENCODE_KEY.fullmatch(key).groups()
    got = getattr(audio_encode(g, prefix, "packed" if index is None else index), ENCODE_FIELD[out])
    if out in ("features", "quantized"):
        return float_row(name, got, audio_expected(g, key), AUDIO_TOL[prefix])
    return exact_row(name, got, audio_expected(g, key))


def rvq_row(g: Golden, key: str, name: str) -> Row:
    params, _ = audio_model(g, "f32")
    vq = params["encoder"]["quantizer"]["vq"]
    want_codes = audio_expected(g, "rvq.codes")
    x = g.arrays("audio_tokenizer/inputs.safetensors")["rvq.x"]
    codes = audio.rvq_encode(vq, x, n_q=want_codes.shape[0])  # [N, D] -> [Q, N]
    if key == "rvq.codes":
        return exact_row(name, codes, want_codes)
    return float_row(name, audio.rvq_decode(vq, codes), audio_expected(g, key), RVQ_TOL)


def decode_row(g: Golden, key: str, name: str) -> Row:
    prefix, _, out = key.split(".")
    result, samples = audio_decode(g, prefix)
    row = float_row(name, getattr(result, out), audio_expected(g, key), AUDIO_TOL[prefix])
    if out == "wav" and result.wav.shape[-1] != samples:
        return dataclasses.replace(row, passed=False, note=f"{result.wav.shape[-1]} samples != {samples}")
    return row


def audio_cases(g: Golden) -> list[Case]:
    cases = []
    for key in g.keys("audio_tokenizer/expected.safetensors"):
        name = f"audio_tokenizer/{key}"
        encode_key = ENCODE_KEY.fullmatch(key)
        decode_key = re.fullmatch(r"(\w+)\.decode\.(vq|coarse_mel|wav)", key)
        if re.fullmatch(r"mel\.\d+", key):
            check = mel_row
        elif encode_key and encode_key[1] in DTYPES:
            # integer outputs (codes, lengths) are required only of the exact runs; none exist for bf16
            exact = encode_key[3] in ("codes", "output_length")
            check = encode_row if not exact or encode_key[1] in EXACT_RUNS else missing_row
        elif key in ("rvq.codes", "rvq.decoded"):
            check = rvq_row
        elif decode_key and decode_key[1] in DTYPES:
            check = decode_row
        else:
            check = missing_row
        cases.append(Case(name, functools.partial(check, g, key, name)))
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Streaming decode (`audio_tokenizer/streaming*`): the official `streaming_decode`, case by case


STREAM_TOL = {"f32": 1e-5, "f64": 1e-6}
STREAM_CALL_KEY = re.compile(r"(\w+?)\.(\w+)\.call(\d+)\.stream(\d+)")
STREAM_FULL_KEY = re.compile(r"(\w+?)\.(\w+)\.full\.stream(\d+)")


def streaming_spec(g: Golden) -> dict:
    return g.get("streaming", lambda: json.loads((g.root / "audio_tokenizer" / "streaming.json").read_text("utf-8")))


def streaming_row(g: Golden, case: str, prefix: str, name: str) -> Row:
    """Every call of streaming case ``case`` in run ``prefix``: the official emitted / not-emitted pattern and sample
    counts exactly, each emitted chunk within the run's relative L2 tolerance (the worst chunk is reported)."""
    spec = streaming_spec(g)[case]
    inputs = g.arrays("audio_tokenizer/streaming_inputs.safetensors")
    expected = g.arrays("audio_tokenizer/streaming_expected.safetensors")
    streams, calls, emitted = spec["streams"], spec["chunk_input_lengths"], spec["emitted"][prefix]
    codes = [inputs[f"{case}.codes.{i}"] for i in range(streams)]  # S x [C, T_i]
    config = streaming.StreamingConfig(left_overlap=spec["left_overlap"], right_overlap=spec["right_overlap"])
    pad_to = streaming.stream_frames_bound(config, max(max(row) for row in calls))  # one compiled shape per case
    worst, worst_abs, problems = 0.0, 0.0, []
    with x64(prefix):
        params, cfg = audio_model(g, prefix)
        state = streaming.init_state(streams, cfg)
        offsets = [0] * streams
        for k, lengths in enumerate(calls):
            pieces = [codes[i][:, o : o + n] for i, (o, n) in enumerate(zip(offsets, lengths, strict=True))]
            chunk = np.concatenate(pieces, axis=1)  # S x [C, n_i] -> [C, sum n_i], in stream order
            offsets = [o + n for o, n in zip(offsets, lengths, strict=True)]
            last = k == len(calls) - 1
            wavs, state = streaming.streaming_decode(
                params, chunk, lengths, state, cfg=cfg, config=config, last_chunk=last, pad_to=pad_to
            )
            for i, wav in enumerate(wavs):
                key = f"{prefix}.{case}.call{k}.stream{i}"
                want_n = emitted[k][i]
                got_n = None if wav is None else int(wav.shape[0])
                if got_n != want_n:
                    problems.append(f"call {k} stream {i}: {got_n} samples, official {want_n}")
                elif wav is not None:
                    worst = max(worst, rel_l2(wav[None, :], expected[key]))
                    worst_abs = max(worst_abs, max_abs(wav[None, :], expected[key]))
    tol = STREAM_TOL[prefix]
    note = "; ".join(problems[:3]) if problems else f"{len(calls)} calls x {streams} streams; worst chunk"
    return Row(name, "float", worst_abs, worst, tol, not problems and worst <= tol, note)


def streaming_full_row(g: Golden, key: str, name: str) -> Row:
    """``{prefix}.{case}.full.stream{i}``: the one-shot ``decode`` of stream i's whole code sequence."""
    prefix, case, i = STREAM_FULL_KEY.fullmatch(key).groups()
    codes = g.arrays("audio_tokenizer/streaming_inputs.safetensors")[f"{case}.codes.{i}"]
    with x64(prefix):
        params, cfg = audio_model(g, prefix)
        wav = audio.decode(params, codes, cfg=cfg).wav
    return float_row(name, wav, g.arrays("audio_tokenizer/streaming_expected.safetensors")[key], STREAM_TOL[prefix])


def streaming_cases(g: Golden) -> list[Case]:
    if not (g.root / "audio_tokenizer" / "streaming.json").is_file():
        name = "audio_tokenizer/streaming.json"
        return [Case(name, lambda: Row(name, "error", math.nan, None, None, False, "missing from this fixture set"))]
    spec = streaming_spec(g)
    cases, known = [], set()
    for case, c in spec.items():
        for prefix in c["emitted"]:
            name = f"audio_tokenizer/streaming/{prefix}.{case}"
            cases.append(Case(name, functools.partial(streaming_row, g, case, prefix, name)))
            known |= {
                f"{prefix}.{case}.call{k}.stream{i}"
                for k in range(len(c["emitted"][prefix]))
                for i in range(c["streams"])
            }
    for key in g.keys("audio_tokenizer/streaming_expected.safetensors"):
        name = f"audio_tokenizer/streaming/{key}"
        full = STREAM_FULL_KEY.fullmatch(key)
        if full and full[1] in STREAM_TOL:
            cases.append(Case(name, functools.partial(streaming_full_row, g, key, name)))
        elif key not in known:
            cases.append(Case(name, functools.partial(missing_row, g, key, name)))
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Pipeline: prompts, resampling, end-to-end runs


def prompt_context(g: Golden) -> prompts.PromptContext:
    return g.get("ctx", lambda: prompts.load_prompt_context(g.root / "lm"))


def wav_codes(g: Golden) -> dict[str, np.ndarray]:
    """Codes of both fixture wavs, made as the official pipeline makes them (first C codes, padded to G)."""

    def compute():
        params, cfg = audio_model(g, OFFICIAL)  # the wrapper's bf16-rounded tokenizer
        ctx = prompt_context(g)
        out = {}
        for arg, file_key in (("W24", "wav_24k"), ("W16", "wav_16k")):
            wave, _ = load_audio_24k(g.root / "pipeline" / g.cases_json["inputs"][file_key])
            codes = np.asarray(audio.wav_to_codes(params, cfg, wave, ctx.audio_channels))
            out[arg] = prompts.pad_codes_to_group(codes, ctx.group_size)
        return out

    return g.get("wav_codes", compute)


def prompt_layout_row(g: Golden, key: str, name: str) -> Row:
    """The official call of prompt ``key`` (audio codes read back from the fixture): every id exact."""
    want = g.arrays("pipeline/prompts.safetensors")[key]
    templates = g.cases_json["templates_used"][key]
    prompt = official_prompt(key, prompt_context(g), want, templates)
    row = exact_row(name, prompt.input_ids, want)
    if prompt.templates != tuple(templates):
        return dataclasses.replace(row, passed=False, note=f"templates {prompt.templates} != official {templates}")
    if key in official_calls().AUDIO_CASES and not row.note:
        return dataclasses.replace(row, note="layout, codes from the fixture")
    return row


def prompt_from_wav_row(g: Golden, key: str, name: str) -> Row:
    """The official call of prompt ``key`` on codes made here from the wavs by the tokenizer in the official
    precision: every id exact, codes included."""
    ctx = prompt_context(g)
    codes = wav_codes(g)
    args = {arg: codes[wav] for arg, wav in official_calls().AUDIO_CASES[key]}
    got = official_calls().audio_call(key, ctx, args, g.cases_json["templates_used"][key]).input_ids
    want = g.arrays("pipeline/prompts.safetensors")[key]
    return exact_row(name, got, want, "codes from the wavs, official precision")


def prompt_cases(g: Golden) -> list[Case]:
    cases = []
    for key in g.keys("pipeline/prompts.safetensors"):
        name = f"pipeline/prompts/{key}"
        known = key in official_calls().TEXT_CASES or key in official_calls().AUDIO_CASES
        cases.append(Case(name, functools.partial(prompt_layout_row if known else missing_row, g, key, name)))
        if key in official_calls().AUDIO_CASES:
            cases.append(
                Case(f"{name} [from wav]", functools.partial(prompt_from_wav_row, g, key, f"{name} [from wav]"))
            )
    return cases


def resample_row(g: Golden, key: str, name: str) -> Row:
    arrays = g.arrays("pipeline/resample.safetensors")
    source, target = re.fullmatch(r"out_(\w+?)_to_(\w+)", key).groups()
    out = resample(arrays[f"in_{source}"], parse_rate(source), parse_rate(target))
    return float_row(name, out, arrays[key], RESAMPLE_TOL)  # a length difference fails as a shape difference


def parse_rate(text: str) -> int:
    """Rates in resample fixture names: "16k" -> 16000, "44k1" -> 44100, "22k05" -> 22050."""
    m = re.fullmatch(r"(\d+)k(\d*)", text)
    if not m:
        raise ValueError(f"unrecognised rate {text!r} in a resample fixture name")
    whole, frac = m.groups()
    return int(whole) * 1000 + (int(frac) * 10 ** (3 - len(frac)) if frac else 0)


def resample_cases(g: Golden) -> list[Case]:
    cases = []
    for key in g.keys("pipeline/resample.safetensors"):
        if key.startswith("in_"):
            continue  # inputs
        name = f"pipeline/resample/{key}"
        check = resample_row if re.fullmatch(r"out_(\w+?)_to_(\w+)", key) else missing_row
        cases.append(Case(name, functools.partial(check, g, key, name)))
    return cases


def e2e_run(g: Golden, run: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """(cases.json spec, official prompt + generated ids ``[C+1, L]``, the prompt ``[C+1, P]`` it ran from)."""
    spec = g.cases_json["runs"][run]
    ids = g.arrays("pipeline/expected.safetensors")[f"{run}.generated_ids"]
    return spec, ids, g.arrays("pipeline/prompts.safetensors")[spec["task"]]


def e2e_generate(g: Golden, run: str) -> np.ndarray:
    """This port's run of ``run`` in the official precision: greedy global and local sampling from the official
    prompt, ``max_new_tokens`` and stop tokens from ``cases.json`` -> prompt + generated ids ``[C+1, L]``."""

    def compute():
        spec, _, prompt = e2e_run(g, run)
        params, cfg, special = lm_model(g, OFFICIAL)
        result = generate.generate(
            params,
            cfg,
            special,
            prompt,
            max_new_groups=spec["max_new_tokens"],
            stop_tokens=spec["stop_tokens"],
            text_sampler=sampling.GREEDY,
            speech_sampler=sampling.GREEDY,
        )
        return result.sequence(0)

    return g.get(f"e2e:{run}", compute)


def e2e_ids_row(g: Golden, run: str, name: str) -> Row:
    """Generation in the official precision reproduces the official ids exactly (prompt + generated groups)."""
    _, want, _ = e2e_run(g, run)
    got = e2e_generate(g, run)
    note = f"{got.shape[1]} columns, official {want.shape[1]}" if got.shape != want.shape else ""
    return exact_row(name, got, want, note)


def text_tokenizer(g: Golden):
    return g.get("tokenizer", lambda: load_text_tokenizer(g.root / "lm"))


def e2e_text_row(g: Golden, run: str, name: str) -> Row:
    """The official ``forward()`` text of the run, decoded here from this port's generated ids: exact."""
    spec, _, prompt = e2e_run(g, run)
    _, cfg, _ = lm_model(g, OFFICIAL)
    ids = e2e_generate(g, run)
    text, _ = pipeline.decode_outputs(ids, prompt.shape[1], tokenizer=text_tokenizer(g), cfg=cfg, audio=None)
    same = text == spec["text"]
    note = "" if same else f"decoded {text!r} != official {spec['text']!r}"
    return Row(name, "text", 0.0 if same else 1.0, None, 0.0, same, note)


def e2e_wav_row(g: Golden, run: str, name: str) -> Row:
    """The speech span of this port's generated ids, decoded in the official precision and written / read back as
    16-bit PCM like the official run, vs the official waveform: max abs difference at most 1 LSB."""
    spec, _, prompt = e2e_run(g, run)
    _, cfg, _ = lm_model(g, OFFICIAL)
    tokenizer = audio_model(g, OFFICIAL)
    ids = e2e_generate(g, run)
    _, wav = pipeline.decode_outputs(ids, prompt.shape[1], tokenizer=text_tokenizer(g), cfg=cfg, audio=tokenizer)
    got = pcm16_round_trip(wav, spec.get("wav_sr", tokenizer[1].sampling_rate))
    want = g.arrays("pipeline/expected.safetensors")[f"{run}.wav"].reshape(-1)
    if got.shape != want.shape:
        return Row(name, "lsb", math.nan, None, 1.0, False, f"{got.shape[0]} samples, official {want.shape[0]}")
    worst = max_abs(got, want) / PCM16_LSB
    return Row(name, "lsb", worst, rel_l2(got, want), 1.0, worst <= 1.0001, "16-bit PCM round trip, in LSB")


PCM16_LSB = 1.0 / 32768  # one step of 16-bit PCM read back as float


def pcm16_round_trip(wav: np.ndarray, sr: int) -> np.ndarray:
    """What the official run wrote (``soundfile.write``: 16-bit PCM) read back as float32."""
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="WAV", subtype="PCM_16")
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def e2e_cases(g: Golden) -> list[Case]:
    cases = []
    known = set()
    expected_keys = g.keys("pipeline/expected.safetensors")
    for run in sorted(g.cases_json["runs"]):
        name = f"pipeline/expected/{run}.generated_ids"
        cases.append(Case(name, functools.partial(e2e_ids_row, g, run, name)))
        name = f"pipeline/cases/{run}.text"
        cases.append(Case(name, functools.partial(e2e_text_row, g, run, name)))
        if f"{run}.wav" in expected_keys:
            name = f"pipeline/expected/{run}.wav"
            cases.append(Case(name, functools.partial(e2e_wav_row, g, run, name)))
        known |= {f"{run}.generated_ids", f"{run}.wav"}
    for key in expected_keys:
        if key not in known:
            name = f"pipeline/expected/{key}"
            cases.append(Case(name, functools.partial(missing_row, g, key, name)))
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Entry points


def resolve_golden_dir(golden_dir: str | Path | None) -> Path:
    root = BUNDLED_GOLDEN if golden_dir is None else Path(golden_dir).resolve()
    if golden_dir is None and not root.is_dir():
        raise FileNotFoundError(
            f"the bundled golden fixtures are missing ({root}); run from a source checkout or pass --golden-dir"
        )
    for part in ("lm/expected.safetensors", "audio_tokenizer/expected.safetensors", "pipeline/cases.json"):
        if not (root / part).is_file():
            raise FileNotFoundError(f"{root} is not a golden fixture set: {part} is missing")
    return root


def all_cases(golden: Golden) -> list[Case]:
    return [
        *lm_cases(golden),
        *audio_cases(golden),
        *streaming_cases(golden),
        *prompt_cases(golden),
        *resample_cases(golden),
        *e2e_cases(golden),
    ]


def run_all(golden_dir: str | Path | None = None, only: str | None = None) -> list[Row]:
    """Run every golden case (or those whose name contains ``only``) -> one :class:`Row` per case, in order.

    A case that raises becomes a failed row whose note holds the error.
    """
    golden = Golden(resolve_golden_dir(golden_dir))
    cases = [c for c in all_cases(golden) if only is None or only in c.name]
    if not cases:
        raise ValueError(f"no golden case name contains {only!r}")
    rows = []
    for case in cases:
        try:
            rows.append(case.run())
        except Exception as exc:  # reported in the table, never skipped
            rows.append(Row(case.name, "error", math.nan, None, None, False, f"{type(exc).__name__}: {exc}"))
    return rows


def format_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2e}"


def tol_text(row: Row) -> str:
    if row.kind in ("exact", "text"):
        return "exact"
    if row.kind == "lsb":
        return "1 LSB"
    return format_number(row.tol)


def max_abs_text(row: Row) -> str:
    if row.kind == "lsb":
        return f"{row.max_abs:.2f} LSB"
    if row.kind in ("exact", "text"):  # counts of mismatches
        return "-" if math.isnan(row.max_abs) else str(int(row.max_abs))
    return format_number(row.max_abs)


def format_table(rows: list[Row]) -> str:
    """Aligned columns: case | max abs | rel err | tol | result | note."""
    header = ("case", "max abs", "rel err", "tol", "result", "note")
    body = [
        (r.case, max_abs_text(r), format_number(r.rel_err), tol_text(r), "pass" if r.passed else "FAIL", r.note)
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header) - 1)]
    lines = []
    for line in [header, *body]:
        cells = [cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(lines)
