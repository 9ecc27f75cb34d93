"""The official calls behind the pipeline golden fixtures, and teacher-forced comparison of generations.

Shared by the golden tests (``tests/golden/``) and ``mimo-ref verify`` (:mod:`mimo_ref.verify`), so both check
exactly the same thing. See ``docs/fixtures.md`` for how the fixtures were made and what each one proves.

- Prompt cases: ``pipeline/prompts.safetensors`` holds one ``input_ids`` array per official prompt-builder call;
  :func:`text_call` / :func:`audio_call` are those calls (the table of ``tests/fixtures/golden/arguments.md``),
  written against :mod:`mimo_ref.prompts`. Ids, shapes and the randomly drawn templates come from the fixture
  files (``cases.json`` ``templates_used``); only the call arguments are written here.
- Generations: ``pipeline/expected.safetensors`` ``e2e_*.generated_ids`` were produced by the official wrapper in
  **bfloat16** on another machine, whose bf16 kernels round differently from any CPU here, so a free-running
  greedy generation cannot reproduce them (a near-tie decided differently changes everything after it).
  :func:`teacher_forced_decisions` instead replays the official ids through this port's float32 model and
  compares every decision the official run made, one at a time, each from the official history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from mimo_ref import generate, lm, sampling
from mimo_ref import prompts as P
from mimo_ref.config import LMConfig, SpecialTokens

# ----------------------------------------------------------------------------------------------------------------
# Prompt cases (arguments.md). Audio arguments are the names of the fixture wavs: "W24" = cases.json
# inputs.wav_24k (speech_24k.wav), "W16" = inputs.wav_16k (speech_16k.wav, resampled to 24 kHz on load).

TEXT_EN = "Hello world, this is a test."  # cases.json inputs.text_en (the tests check it)

# Cases whose only inputs are text.
TEXT_CASES = (
    "tts",
    "tts_lowercase",
    "tts_zh",
    "tts_instruct",
    "tts_free",
    "text_dialogue",
    "text_dialogue_think",
    "text_dialogue_multiturn",
)

# Cases with audio: (argument name, wav) in the order their codes appear in the prompt.
AUDIO_CASES: dict[str, list[tuple[str, str]]] = {
    "asr": [("input", "W24")],
    "asr_16k": [("input", "W16")],
    "tts_instruct_voice": [("voice", "W16")],
    "tts_free_voice": [("voice", "W24")],
    "audio_understanding": [("input", "W24")],
    "audio_understanding_think": [("input", "W24")],
    "spoken_dialogue": [("voice", "W16"), ("input", "W24")],
    "spoken_dialogue_plain": [("input", "W16")],
    "spoken_dialogue_multiturn": [("voice", "W24"), ("user0", "W24"), ("assistant1", "W16"), ("user2", "W16")],
    "s2t_dialogue": [("input", "W24")],
    "s2t_dialogue_think": [("input", "W24")],
    "s2t_dialogue_multiturn": [("user0", "W24"), ("user2", "W16")],
    "in_context_s2s": [("example_in", "W24"), ("example_out", "W16"), ("input", "W16")],
}

# The official wrapper encodes prompt audio with the tokenizer cast to bfloat16 (`MimoAudio.__init__`:
# `.bfloat16()`), and the fixtures were made on a machine whose bfloat16 kernels round differently from this
# CPU's: official torch run here reproduces neither the fixture codes in bfloat16 (90% of them for speech_24k)
# nor in float32 (93%), while this port's float32 codes equal official torch float32 exactly. Codes of this
# random tiny tokenizer sit close to ties, so the rounding of a bfloat16 run decides about one code in ten.
# Pinned from a wav: the shape and every non-code id exactly, and at least MIN_CODE_AGREEMENT of the codes (a
# wrong tokenizer agrees on about 1/1024 to 1/128 of them). The layout cases pin everything else exactly.
MIN_CODE_AGREEMENT = 0.85

# Teacher-forced decisions (see `teacher_forced_decisions`). A decision whose top-1/top-2 logit margin in this
# port's float32 run exceeds DECISION_MARGIN must equal the official one. Measured on the bundled fixtures: every
# disagreement had a margin below 0.008 (1 of 96 patch-decoder decisions for e2e_asr, 2 of 256 for e2e_tts; all
# text decisions agree, smallest margin 0.056), while 82% of all decisions have a margin above 0.05. At least
# MIN_CONFIDENT_FRACTION of the decisions must clear the margin, so the rule can never pass vacuously.
DECISION_MARGIN = 0.05
MIN_CONFIDENT_FRACTION = 0.5

# e2e_tts.wav was decoded by the official tokenizer in bfloat16 (then written as 16-bit PCM): this port's float32
# decode of the same codes is 9.6e-3 away (relative L2; max abs 3.0e-3), so the tokenizer's bfloat16 tolerance
# applies. A 16-bit quantisation tolerance (~3e-5 abs) is unreachable against a bfloat16 decode.
WAV_TOL = 5e-2


def text_call(name: str, ctx: P.PromptContext, templates: Sequence) -> P.Prompt:
    """The official call of text-only case ``name``; ``templates``: the template(s) it drew, in order."""
    if name == "tts":
        return P.tts_prompt(ctx, TEXT_EN, template=templates[0])
    if name == "tts_lowercase":
        return P.tts_prompt(ctx, "hello world", template=templates[0])
    if name == "tts_zh":
        return P.tts_prompt(ctx, "今天天气很好", template=templates[0])
    if name == "tts_instruct":
        return P.tts_prompt(ctx, TEXT_EN, instruct="Speak slowly and warmly", template=templates[0])
    if name == "tts_free":
        return P.tts_prompt(ctx, "Speak slowly and warmly", read_text_only=False)
    if name == "text_dialogue":
        return P.text_dialogue_prompt(ctx, "What is in the audio?")
    if name == "text_dialogue_think":
        return P.text_dialogue_prompt(ctx, "What is in the audio?", thinking=True)
    if name == "text_dialogue_multiturn":
        messages = [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Describe the sound."},
        ]
        return P.text_dialogue_multiturn_prompt(ctx, messages, thinking=True)
    raise KeyError(name)


def audio_call(name: str, ctx: P.PromptContext, a: dict, templates: Sequence) -> P.Prompt:
    """The official call of audio case ``name``, with ``a[arg]`` the codes ``[C, T]`` of each audio argument."""
    if name in ("asr", "asr_16k"):
        return P.asr_prompt(ctx, a["input"], template=templates[0])
    if name == "tts_instruct_voice":
        return P.tts_prompt(ctx, TEXT_EN, instruct="Speak slowly", prompt_speech=a["voice"], template=templates[0])
    if name == "tts_free_voice":
        return P.tts_prompt(ctx, "Speak slowly", read_text_only=False, prompt_speech=a["voice"])
    if name == "audio_understanding":
        return P.audio_understanding_prompt(ctx, a["input"], "What is in the audio?")
    if name == "audio_understanding_think":
        return P.audio_understanding_prompt(ctx, a["input"], "Describe the sound.", thinking=True)
    if name == "spoken_dialogue":
        return P.spoken_dialogue_prompt(ctx, a["input"], system_prompt="You are helpful.", prompt_speech=a["voice"])
    if name == "spoken_dialogue_plain":
        return P.spoken_dialogue_prompt(ctx, a["input"])
    if name == "spoken_dialogue_multiturn":
        messages = [
            {"role": "user", "content": a["user0"]},
            {"role": "assistant", "content": {"text": "Hello there.", "audio": a["assistant1"]}},
            {"role": "user", "content": a["user2"]},
        ]
        return P.spoken_dialogue_multiturn_prompt(ctx, messages, system_prompt="Be brief.", prompt_speech=a["voice"])
    if name in ("s2t_dialogue", "s2t_dialogue_think"):
        return P.s2t_dialogue_prompt(ctx, a["input"], thinking=name.endswith("think"))
    if name == "s2t_dialogue_multiturn":
        messages = [
            {"role": "user", "content": a["user0"]},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": a["user2"]},
        ]
        return P.s2t_dialogue_multiturn_prompt(ctx, messages)
    if name == "in_context_s2s":
        example = {
            "input_audio": a["example_in"],
            "output_transcription": "The quick brown fox jumps over the lazy dog.",
            "output_audio": a["example_out"],
        }
        return P.in_context_s2s_prompt(ctx, "Convert the voice", [example], a["input"])
    raise KeyError(name)


def extract_audio(ids: np.ndarray, ctx: P.PromptContext) -> list[np.ndarray]:
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


def official_prompt(name: str, ctx: P.PromptContext, golden_ids: np.ndarray, templates: Sequence) -> P.Prompt:
    """The prompt of case ``name`` rebuilt from its official call; audio codes (if any) read from ``golden_ids``.

    This pins every text id, -100 filler, empty id and wrapper group exactly, independently of the tokenizer.
    """
    if name in TEXT_CASES:
        return text_call(name, ctx, templates)
    found = extract_audio(golden_ids, ctx)
    if len(found) != len(AUDIO_CASES[name]):
        raise ValueError(
            f"{name}: {len(found)} audio segments in the golden prompt, the call has {len(AUDIO_CASES[name])}"
        )
    codes = {arg: c for (arg, _), c in zip(AUDIO_CASES[name], found, strict=True)}
    return audio_call(name, ctx, codes, templates)


def code_agreement(actual: np.ndarray, expected: np.ndarray, ctx: P.PromptContext) -> float:
    """Fraction of the audio-code positions (speech ids that are not empty ids in ``expected``) that agree."""
    empty = np.asarray(ctx.speech_empty_ids)[:, None]  # [C, 1]
    is_code = expected[1:] != empty  # [C, L]
    return float(np.mean(actual[1:][is_code] == expected[1:][is_code]))


# ----------------------------------------------------------------------------------------------------------------
# Teacher forcing


@dataclasses.dataclass(frozen=True)
class Decisions:
    """Every decision of a greedy generation, replayed from the official history. Arrays of N decisions.

    kind ``[N]``: ``"text"`` (the global sampler's text token of a generated group) or ``"speech"`` (one channel's
    token at one patch-decoder step of a speech group). group ``[N]``: generated group index (0 = first after the
    prompt). channel / frame ``[N]``: audio channel and frame within the group (-1 for text). ours ``[N]``: this
    port's greedy choice. official ``[N]``: the official token. margin ``[N]``: top-1 minus top-2 of this port's
    scores (logits; empty id removed for speech), i.e. how far this port is from choosing otherwise.
    """

    kind: np.ndarray
    group: np.ndarray
    channel: np.ndarray
    frame: np.ndarray
    ours: np.ndarray
    official: np.ndarray
    margin: np.ndarray

    @property
    def agree(self) -> np.ndarray:
        return self.ours == self.official

    def confident(self, tau: float = DECISION_MARGIN) -> np.ndarray:
        return self.margin > tau

    def violations(self, tau: float = DECISION_MARGIN) -> np.ndarray:
        """Indices of decisions with margin > tau that disagree with the official one (must be none)."""
        return np.flatnonzero(self.confident(tau) & ~self.agree)

    def summary(self, tau: float = DECISION_MARGIN) -> str:
        parts = []
        for kind in ("text", "speech"):
            sel = self.kind == kind
            close = np.flatnonzero(sel & ~self.agree)
            margins = ", ".join(f"{m:.4f}" for m in self.margin[close])
            parts.append(
                f"{kind} {int(sel.sum()) - close.size}/{int(sel.sum())} agree"
                + (f" (differ at margin {margins})" if close.size else "")
            )
        return "; ".join(parts) + f"; {np.mean(self.confident(tau)):.0%} of decisions have margin > {tau}"


_forward = jax.jit(lm.forward, static_argnames=("cfg", "empty_id"))
_heads = jax.jit(lm.heads)


def top2_margin(scores: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 along the last axis. ``[..., V]`` -> ``[...]``."""
    top = np.sort(scores, axis=-1)[..., -2:]  # [..., 2] ascending
    return top[..., 1] - top[..., 0]


def teacher_forced_decisions(
    params: dict, cfg: LMConfig, special: SpecialTokens, ids: np.ndarray, prompt_columns: int
) -> Decisions:
    """Replay a greedy generation ``ids`` ``[C+1, L]`` (prompt, then generated groups) through this port.

    The backbone runs once over the whole sequence (causal, so the hidden state at group p sees groups 0..p
    only and predicts group p+1): generated group k's text decision is the argmax of the text logits at position
    ``prompt_groups + k - 1``. For the groups whose official text token is ``<|empty|>`` (speech groups), the
    patch decoder (:func:`mimo_ref.lm.patch_decoder`, batched over those groups) runs with a *forcing* chooser:
    it returns the official tokens, so every step's input is the official history, and records what this port's
    greedy local sampler would have chosen (argmax with the channel's empty id removed) for each active channel.
    The chooser hands each step's scores to the host with ``io_callback``: the patch decoder itself runs
    unchanged, the same compiled loop as in generation.
    """
    ids = np.asarray(ids)
    g, c = cfg.group_size, cfg.audio_channels
    if ids.ndim != 2 or ids.shape[0] != c + 1 or ids.shape[1] % g:
        raise ValueError(f"ids must be [C+1, L] with C = {c} and L a multiple of G = {g}, got {ids.shape}")
    if prompt_columns % g or not 0 < prompt_columns < ids.shape[1]:
        raise ValueError(f"prompt_columns {prompt_columns} must be a multiple of G inside the {ids.shape[1]} columns")
    p = prompt_columns // g  # prompt groups
    n = ids.shape[1] // g - p  # generated groups
    _, hidden, _, _ = _forward(params, jnp.asarray(ids[None]), cfg=cfg, empty_id=special.empty)  # -> [1, T, D]
    logits, local_hidden = _heads(params, hidden[0, p - 1 : p - 1 + n])  # [n, D] -> [n, V], [n, Dl]
    logits = np.asarray(logits, np.float32)
    official_text = ids[0, prompt_columns::g]  # [L] -> [n]: each generated group's text token

    rows = {name: [] for name in ("kind", "group", "channel", "frame", "ours", "official", "margin")}

    def add(kind, group, channel, frame, ours, official, margin):
        for name, value in zip(rows, (kind, group, channel, frame, ours, official, margin), strict=True):
            rows[name].append(value)

    for k in range(n):
        add("text", k, -1, -1, int(np.argmax(logits[k])), int(official_text[k]), float(top2_margin(logits[k])))

    speech_groups = np.flatnonzero(official_text == special.empty)  # [S]
    if speech_groups.size:
        cols = (p + speech_groups)[:, None] * g + np.arange(g)[None, :]  # [S, G] column of each frame
        official = ids[1:, cols].transpose(1, 2, 0)  # [C, S, G] -> [S, G, C]
        _, empty = lm.speech_vocab_masks(cfg)  # [C, Vmax]
        forced = jnp.asarray(official, jnp.int32)
        recorded: dict[int, np.ndarray] = {}  # step -> scores [S, C, Vmax]

        def record(step, scores):
            recorded[int(step)] = np.asarray(scores, np.float32)

        def forcing(step_logits, step, keys):
            io_callback(record, None, step, sampling.remove_tokens(step_logits, empty[None]), ordered=True)
            _, frame = lm.channel_activity(step, cfg=cfg)  # [C]
            return forced[:, frame, jnp.arange(c)]  # [S, G, C] -> [S, C]: each channel's official frame

        keys = jax.random.split(jax.random.key(0), speech_groups.size)  # unused by `forcing`
        tokens = lm.patch_decoder(params, local_hidden[speech_groups], forcing, keys, cfg=cfg)
        if not np.array_equal(np.asarray(tokens), official) or sorted(recorded) != list(range(cfg.local_steps)):
            raise RuntimeError("teacher forcing did not replay the official tokens step by step")
        for step, scores in sorted(recorded.items()):
            active, frame = (np.asarray(a) for a in lm.channel_activity(step, cfg=cfg))
            ours, margin = scores.argmax(-1), top2_margin(scores)  # [S, C]
            for s, k in enumerate(speech_groups):
                for ch in np.flatnonzero(active):
                    f = int(frame[ch])
                    add("speech", int(k), int(ch), f, int(ours[s, ch]), int(official[s, f, ch]), float(margin[s, ch]))

    return Decisions(
        kind=np.asarray(rows["kind"]),
        group=np.asarray(rows["group"], np.int64),
        channel=np.asarray(rows["channel"], np.int64),
        frame=np.asarray(rows["frame"], np.int64),
        ours=np.asarray(rows["ours"], np.int64),
        official=np.asarray(rows["official"], np.int64),
        margin=np.asarray(rows["margin"], np.float64),
    )


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
