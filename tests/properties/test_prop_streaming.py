"""Properties of the streaming decode (``mimo_ref/audio/streaming.py``) and of the streaming spoken answers built
on it (``mimo_ref/pipeline.py``: ``speech_chunks``, ``stream_speech``).

- The bookkeeping rule (:func:`predicted_frames`, the official rule restated on lengths alone) reproduces every
  emitted/not-emitted entry of the golden ``streaming.json``, and the port follows it for any chunking, stream
  count and overlap: a call's sample count is ``u`` times the rule's frames (``u`` = 960 for the real tokenizer),
  so a single stream (or equal streams fed alike) totals ``frames * u`` samples whenever
  ``left_overlap >= right_overlap``.
- Content: for one stream, every emitted chunk is the matching slice of the one-shot decode of the window the
  call decoded (cached frames + new ones): streaming is windowed one-shot decoding, nothing else.
- Pipeline: :func:`speech_chunks` cuts exactly the official speech span (:func:`speech_span`) into
  ``[k] * (T // k) + [T % k]`` chunks, and :func:`stream_speech` returns exactly what the pure
  ``streaming_decode`` returns for those chunks.

The bundled tiny tokenizer is used; code lengths stay <= 40 frames per stream so every call pads to the one
64-frame bucket (one compile per stream count).
"""

from __future__ import annotations

import functools
import json

import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mimo_ref import pipeline
from mimo_ref.audio import decode_padded, load_audio_tokenizer, waveform
from mimo_ref.audio.streaming import StreamingConfig, init_state, samples_per_frame, streaming_decode
from mimo_ref.config import load_lm_config
from mimo_ref.testing import strategies as mst
from mimo_ref.text import load_text_tokenizer
from tests.golden_utils import rel_l2

MAX_FRAMES = 40  # per stream: inputs stay <= 64 frames, one bucket
OVERLAPS = [(250, 40), (24, 6), (16, 8), (8, 0), (1, 0), (5, 10), (3, 12)]  # (left, right); the last two: left < right


@functools.cache
def tokenizer():
    return load_audio_tokenizer(pipeline.BUNDLED_AUDIO_TOKENIZER)


def predicted_frames(chunkings: list[list[int]], left: int, right: int) -> list[list[int | None]]:
    """Frames each call returns per stream under the official rule, or None where it returns nothing.

    Per stream: input = cached + new; the last call returns from ``processed`` to the longest input of the call
    (the padded batch); otherwise nothing while input <= right (and processed resets to 0), else
    ``[processed, input - right)``, then the cache keeps the last ``left`` frames when input > left. Slices follow
    Python's rules on the padded batch output: with left < right, processed can go negative and then counts from
    its end (official quirk).
    """
    streams = len(chunkings[0])
    cached, processed = [0] * streams, [0] * streams
    out = []
    for k, lengths in enumerate(chunkings):
        inputs = [c + n for c, n in zip(cached, lengths, strict=True)]
        row: list[int | None] = []
        padded = range(max(inputs))  # the frames of one row of the padded batch output
        for i, length in enumerate(inputs):
            if k == len(chunkings) - 1:
                row.append(len(padded[processed[i] :]))
                cached[i], processed[i] = length, length
            elif length <= right:
                row.append(None)
                cached[i], processed[i] = length, 0
            else:
                row.append(len(padded[processed[i] : length - right]))
                cached[i], processed[i] = length, length - right
                if length > left:
                    cached[i], processed[i] = left, processed[i] - (length - left)
        out.append(row)
    return out


def run_stream(codes: list[np.ndarray], chunkings: list[list[int]], config: StreamingConfig):
    """Feed each stream's codes in the given chunking; returns the per-call outputs (``wavs`` lists)."""
    params, cfg = tokenizer()
    state = init_state(len(codes), cfg)
    offsets = [0] * len(codes)
    calls = []
    for k, lengths in enumerate(chunkings):
        chunk = np.concatenate([c[:, o : o + n] for c, o, n in zip(codes, offsets, lengths, strict=True)], axis=1)
        offsets = [o + n for o, n in zip(offsets, lengths, strict=True)]
        wavs, state = streaming_decode(
            params, chunk, lengths, state, cfg=cfg, config=config, last_chunk=k == len(chunkings) - 1
        )
        calls.append(wavs)
    return calls


def test_rule_reproduces_the_golden_emitted_pattern(golden_dir):
    """The rule above, on lengths alone, predicts every emitted entry of the official fixture cases."""
    cases = json.loads((golden_dir / "audio_tokenizer" / "streaming.json").read_text())
    _, cfg = tokenizer()
    u = samples_per_frame(cfg)
    for name, case in cases.items():
        frames = predicted_frames(case["chunk_input_lengths"], case["left_overlap"], case["right_overlap"])
        want = [[None if f is None else f * u for f in row] for row in frames]
        for prefix, emitted in case["emitted"].items():
            assert want == emitted, f"{prefix}.{name}"


@st.composite
def chunkings(draw, *, streams: int):
    """Per-stream totals <= MAX_FRAMES split over 1..4 calls (chunks may be 0; stream 0 starts with >= 1)."""
    calls = draw(st.integers(1, 4))
    per_stream = []
    for i in range(streams):
        total = draw(st.integers(1, MAX_FRAMES))
        cuts = sorted(draw(st.lists(st.integers(0, total), min_size=calls - 1, max_size=calls - 1)))
        parts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
        if i == 0 and parts[0] == 0:  # the first call must have something to decode
            donor = next(j for j, n in enumerate(parts) if n > 0)
            parts[donor] -= 1
            parts[0] += 1
        per_stream.append(parts)
    return [list(row) for row in zip(*per_stream, strict=True)]  # [calls][streams]


@given(
    streams=st.sampled_from([1, 2]),
    data=st.data(),
    overlap=st.sampled_from(OVERLAPS),
    same=st.booleans(),
    seed=mst.seeds(),
)
def test_emitted_pattern_and_sample_counts_follow_the_rule(streams, data, overlap, same, seed):
    """Any chunking: None exactly where the rule says, sample counts = rule frames * u; totals = frames * u for a
    single stream, or equal streams fed in equal chunks, when left_overlap >= right_overlap."""
    _, cfg = tokenizer()
    calls = data.draw(chunkings(streams=1 if same else streams))
    if same:
        calls = [row * streams for row in calls]  # every stream fed the same chunk lengths
    totals = [sum(row[i] for row in calls) for i in range(streams)]
    codes = [mst.make_codes(cfg.codebook_sizes[:8], t, seed + i) for i, t in enumerate(totals)]
    config = StreamingConfig(*overlap)
    outputs = run_stream(codes, calls, config)
    u = samples_per_frame(cfg)
    for k, (got, want) in enumerate(zip(outputs, predicted_frames(calls, *overlap), strict=True)):
        assert [None if w is None else w.shape[0] for w in got] == [None if f is None else f * u for f in want], k
    if (streams == 1 or same) and overlap[0] >= overlap[1]:
        for i, total in enumerate(totals):
            assert sum(w.shape[0] for row in outputs if (w := row[i]) is not None) == total * u


@given(data=st.data(), overlap=st.sampled_from(OVERLAPS), seed=mst.seeds())
def test_single_stream_chunks_are_slices_of_the_window_decode(data, overlap, seed):
    """One stream: each emitted chunk is the one-shot decode of the decoded window (cache + new frames), sliced
    from ``processed`` to ``input - right_overlap`` (to the end on the last call)."""
    params, cfg = tokenizer()
    calls = data.draw(chunkings(streams=1))
    total = sum(row[0] for row in calls)
    codes = mst.make_codes(cfg.codebook_sizes[:8], total, seed)
    left, right = overlap
    outputs = run_stream([codes], calls, StreamingConfig(left, right))
    u = samples_per_frame(cfg)
    window_start, fed, processed = 0, 0, 0  # absolute first frame of the cache, frames fed, processed (relative)
    for k, (row, wavs) in enumerate(zip(calls, outputs, strict=True)):
        fed += row[0]
        length = fed - window_start
        padded = np.zeros((codes.shape[0], 1, 64), np.int32)  # [C, 1, 64]: the one decode bucket
        padded[:, 0, :length] = codes[:, window_start:fed]
        one_shot = np.asarray(decode_padded(params, jnp.asarray(padded), jnp.asarray([length]), cfg=cfg)[3])
        one_shot = one_shot[0, 0, : length * u]  # [1, 1, 64 u] -> [length u]: the official output of the window
        if k == len(calls) - 1:
            expected = one_shot[processed * u : length * u]
        elif length <= right:
            assert wavs[0] is None
            processed = 0
            continue
        else:
            expected = one_shot[processed * u : (length - right) * u]
            processed = length - right
            if length > left:
                window_start, processed = fed - left, processed - (length - left)
        assert wavs[0].shape == expected.shape
        assert rel_l2(wavs[0], expected) <= 1e-5, f"call {k}"


# ---------------------------------------------------------------------------------------------------------------
# Streaming spoken answers: speech_chunks + stream_speech against speech_span + the pure streaming decode
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def lm_setup():
    cfg = load_lm_config(pipeline.BUNDLED_LM)
    return cfg, load_text_tokenizer(pipeline.BUNDLED_LM).special


TEXT_KINDS = ("speech", "speech", "speech", "sostm", "eostm", "text")


def make_groups(kinds: list[str], seed: int) -> np.ndarray:
    """Generated groups ``[C+1, n*G]`` of the given kinds; a speech group's channel-0 frames are sometimes empty."""
    cfg, special = lm_setup()
    rng = np.random.default_rng(seed)
    g = cfg.group_size
    empty = np.asarray(cfg.speech_empty_ids)
    ids = np.empty((cfg.audio_channels + 1, len(kinds) * g), np.int64)
    for j, kind in enumerate(kinds):
        cols = slice(j * g, (j + 1) * g)
        text = {"speech": special.empty, "sostm": special.sostm, "eostm": special.eostm, "text": 7}[kind]
        ids[0, cols] = text
        if kind == "speech":
            ids[1:, cols] = rng.integers(0, empty[:, None], size=(cfg.audio_channels, g))
            ids[1, cols] = np.where(rng.random(g) < 0.2, empty[0], ids[1, cols])  # some frames dropped officially
        else:
            ids[1:, cols] = empty[:, None]
    return ids


@given(
    kinds=st.lists(st.sampled_from(TEXT_KINDS), min_size=1, max_size=12),
    opened=st.booleans(),
    chunk_frames=st.integers(1, 6),
    overlap=st.sampled_from([(16, 8), (24, 6), (250, 40)]),
    seed=mst.seeds(),
)
def test_stream_speech_is_the_pure_streaming_decode_of_the_official_span(kinds, opened, chunk_frames, overlap, seed):
    cfg, special = lm_setup()
    g = cfg.group_size
    generated = make_groups(kinds, seed)
    groups = [generated[:, j * g : (j + 1) * g] for j in range(len(kinds))]
    chunks = list(
        pipeline.speech_chunks(iter(groups), special=special, cfg=cfg, chunk_frames=chunk_frames, opened=opened)
    )
    assert [last for _, last in chunks] == [False] * (len(chunks) - 1) + [True]
    fed = np.concatenate([c for c, _ in chunks], axis=1)  # [C, T]
    sostm_after_open = opened and "sostm" in kinds[:-1]  # the documented deviation: streamed frames stay
    if not sostm_after_open:
        np.testing.assert_array_equal(fed, pipeline.speech_span(generated, special=special, cfg=cfg))
    t = fed.shape[1]
    assert [c.shape[1] for c, _ in chunks] == [chunk_frames] * (t // chunk_frames) + [t % chunk_frames]

    params, acfg = tokenizer()
    config = StreamingConfig(*overlap)
    streamed = list(pipeline.stream_speech(iter(chunks), (params, acfg), config))
    if t == 0:
        assert len(streamed) == 1 and not streamed[0].any() and streamed[0].shape == (waveform.EMPTY_AUDIO_SAMPLES,)
        return
    state, pure = init_state(1, acfg), []
    for codes, last in chunks:
        wavs, state = streaming_decode(params, codes, [codes.shape[1]], state, cfg=acfg, config=config, last_chunk=last)
        if wavs[0] is not None and wavs[0].shape[0] > 0:
            pure.append(wavs[0])
    assert len(streamed) == len(pure)
    for a, b in zip(streamed, pure, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sum(w.shape[0] for w in streamed) == t * samples_per_frame(acfg)
