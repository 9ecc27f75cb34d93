"""Properties of the audio tokenizer (``mimo_ref/audio/``): length formulas, packing, RVQ, ISTFT, causal and
windowed attention, float32 vs float64.

Configs come from the fixed corner list ``AUDIO_CORNERS`` (the real mel front end with the real attention layout;
a small front end with a causal windowed encoder, windowed decoder and small vocoder window); segment lengths stay
at most 64 mel frames and code lengths at most 16, so every call reuses one length bucket and one compile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mimo_ref.arith import ceil_div
from mimo_ref.audio import decode, decode_padded, encode, encode_padded, istft, log_mel, param_shapes, rvq
from mimo_ref.audio.mel import periodic_hann
from mimo_ref.audio.transformer import segment_mask
from mimo_ref.checkpoint import nest
from mimo_ref.testing import strategies as mst
from tests.properties import helpers

MAX_MEL_FRAMES = 64  # one encode bucket (bucketing.bucket_length(n) == 64 for n <= 64)
MAX_CODE_FRAMES = 16  # one decode bucket
SEGMENTS = 3  # packed segments per encode call (a fixed batch, so one compile per config)


@functools.cache
def params_for(cfg, seed: int) -> dict:
    """Random params of a corner config (cached: the audio params take a few ms to build and upload)."""
    return mst.audio_params(cfg, seed)


PARAM_SEEDS = st.integers(0, 3)  # a few param draws per config; inputs carry the rest of the randomness


# ---------------------------------------------------------------------------------------------------------------
# Length formulas
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def wave_cases(draw):
    cfg = draw(mst.audio_corner_configs())
    return cfg, draw(mst.waveforms(cfg, max_frames=MAX_MEL_FRAMES))


@given(case=wave_cases())
def test_log_mel_frames_are_samples_over_hop_plus_one(case):
    """``log_mel`` of a wave of n samples has ``n // hop + 1`` frames of M bins, float32, all finite (log floor)."""
    cfg, wave = case
    mel = np.asarray(log_mel(wave, cfg, sample_rate=cfg.sampling_rate))
    assert mel.shape == (wave.shape[0] // cfg.hop_length + 1, cfg.n_mels)
    assert mel.dtype == np.float32 and np.isfinite(mel).all()


@given(
    cfg=mst.audio_corner_configs(),
    lengths=mst.mel_lengths(max_frames=MAX_MEL_FRAMES, min_segments=SEGMENTS, max_segments=SEGMENTS),
    params_seed=PARAM_SEEDS,
    seed=mst.seeds(),
)
def test_encode_code_lengths_follow_the_formula(cfg, lengths, params_seed, seed):
    """Packed segments of L_i mel frames give ``ceil(((L_i - 1) // 2 + 1) / 2)`` code frames each: codes
    ``[Q, sum]`` int64 inside each level's codebook, features and quantized ``[sum, D]`` float32."""
    params = params_for(cfg, params_seed)
    mels = mst.make_mels(cfg, sum(lengths), seed)
    result = encode(params, mels, lengths, cfg=cfg)
    frames = [mst.code_frames(n) for n in lengths]
    assert result.lengths.tolist() == frames == [cfg.code_length(n) for n in lengths]
    assert result.codes.shape == (cfg.num_quantizers, sum(frames)) and result.codes.dtype == np.int64
    assert result.features.shape == result.quantized.shape == (sum(frames), cfg.d_model)
    assert result.features.dtype == result.quantized.dtype == np.float32
    for level, size in enumerate(cfg.codebook_sizes):
        assert 0 <= result.codes[level].min() and result.codes[level].max() < size


@given(
    cfg=mst.audio_corner_configs(),
    frames=st.integers(1, MAX_CODE_FRAMES),
    params_seed=PARAM_SEEDS,
    seed=mst.seeds(),
)
def test_decode_lengths_follow_the_formula(cfg, frames, params_seed, seed):
    """T code frames decode to vq ``[T, D]``, a coarse mel of ``T * avg_pooler * decoder_stride`` frames and
    ``that * hop`` samples: ``960 T`` for the real front end (``T * cfg.samples_per_code``)."""
    params = params_for(cfg, params_seed)
    codes = mst.make_codes(cfg.codebook_sizes, frames, seed)
    out = decode(params, codes, cfg=cfg)
    mel_frames = frames * cfg.avg_pooler * cfg.decoder_stride_size
    assert out.vq.shape == (frames, cfg.d_model)
    assert out.coarse_mel.shape == (1, mel_frames, cfg.n_mels)
    assert out.wav.shape == (1, 1, mel_frames * cfg.hop_length) == (1, 1, frames * cfg.samples_per_code)
    if cfg.hop_length == 240:
        assert out.wav.shape[-1] == 960 * frames
    assert np.isfinite(out.wav).all()


def audio_param_structs(cfg) -> dict:
    """``jax.ShapeDtypeStruct`` params of ``param_shapes(cfg)`` (float32)."""
    return nest({name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in param_shapes(cfg).items()})


@given(cfg=mst.audio_configs(), b=st.sampled_from([1, 3]), t=st.sampled_from([5, 16]))
def test_tokenizer_padded_shapes_follow_the_formulas_for_any_config(cfg, b, t):
    """For any valid tokenizer config (windows, causal flags, skip layer, avg_pooler 2 or 3, decoder kernel 2..4,
    short codebook lists, other mel front ends): ``encode_padded`` of ``[B, T, M]`` gives features ``[B, T3, D]``
    with ``T3 = ceil(encoder_output_length(T) / avg_pooler)`` and codes ``[Q, B, T3]`` int32; ``decode_padded`` of
    codes ``[Q, B, T]`` gives a coarse mel ``[B, T * avg_pooler * decoder_stride, M]`` and a wav of ``hop`` samples
    per mel frame. (``jax.eval_shape``: nothing is compiled.)"""
    params = audio_param_structs(cfg)
    mels = jax.ShapeDtypeStruct((b, t, cfg.n_mels), jnp.float32)
    lengths = jax.ShapeDtypeStruct((b,), jnp.int32)
    encode_fn = functools.partial(encode_padded, cfg=cfg, n_q=cfg.num_quantizers)
    features, out_lengths, codes, quantized = jax.eval_shape(encode_fn, params["encoder"], mels, lengths)
    t3 = ceil_div(cfg.encoder_output_length(t), cfg.avg_pooler)
    assert features.shape == quantized.shape == (b, t3, cfg.d_model) and features.dtype == jnp.float32
    assert codes.shape == (cfg.num_quantizers, b, t3) and codes.dtype == jnp.int32 and out_lengths.shape == (b,)
    code_in = jax.ShapeDtypeStruct((cfg.num_quantizers, b, t), jnp.int32)
    vq, mel, mel_lengths, wav = jax.eval_shape(functools.partial(decode_padded, cfg=cfg), params, code_in, lengths)
    mel_frames = t * cfg.avg_pooler * cfg.decoder_stride_size
    assert vq.shape == (b, t, cfg.d_model) and vq.dtype == jnp.float32
    assert mel.shape == (b, mel_frames, cfg.n_mels) and mel_lengths.shape == (b,)
    assert wav.shape == (b, 1, mel_frames * cfg.hop_length) and wav.dtype == jnp.float32


# ---------------------------------------------------------------------------------------------------------------
# Packed encoding
# ---------------------------------------------------------------------------------------------------------------


def leaks_from_packing(lengths: list[int], i: int) -> bool:
    """Whether segment i may encode differently packed than alone (official batch-padding rules).

    With L the mel frames and L2 = (L - 1) // 2 + 1 the conv2 frames of a segment, and L_max / L2_max those of the
    longest segment of the call:

    - conv stem: the batch is zero-padded to L_max and conv2's last window (k3, s2, pad 1) reads conv1's output at
      frame L when L is odd; packed, that frame is ``gelu(bias + w . last mel frame)``, alone it is conv2's zero
      padding. So an odd L < L_max leaks (through attention, into any frame of the segment).
    - down-sampling: frames past L2 are copies of the segment's last frame up to L2_max, and a zero frame is
      appended only past L2_max. So an odd L2 < L2_max pools its last frame with a copy of itself instead of zero.
    """
    n = lengths[i]
    n2 = (n - 1) // 2 + 1
    longest = max(lengths)
    longest2 = (longest - 1) // 2 + 1
    return (n % 2 == 1 and n < longest) or (n2 % 2 == 1 and n2 < longest2)


@given(
    cfg=mst.audio_corner_configs(),
    lengths=mst.mel_lengths(max_frames=MAX_MEL_FRAMES, min_segments=SEGMENTS, max_segments=SEGMENTS),
    params_seed=PARAM_SEEDS,
    seed=mst.seeds(),
)
def test_packed_encoding_equals_per_segment_encoding_except_the_official_padding_leaks(cfg, lengths, params_seed, seed):
    """Encoding segments packed in one call equals encoding each alone (features to 1e-5, codes exactly) for
    every segment that :func:`leaks_from_packing` clears; for the others the official padding leak is reproduced:
    the last code frame's features differ."""
    params = params_for(cfg, params_seed)
    mels = mst.make_mels(cfg, sum(lengths), seed)
    packed = encode(params, mels, lengths, cfg=cfg)
    starts = np.cumsum([0, *lengths])
    code_starts = np.cumsum([0, *packed.lengths.tolist()])
    for i, n in enumerate(lengths):
        alone = encode(params, mels[starts[i] : starts[i] + n], [n], cfg=cfg)
        rows = slice(code_starts[i], code_starts[i + 1])
        leaks = leaks_from_packing(lengths, i)
        helpers.event(f"segment leaks: {leaks}")
        if leaks:
            last = rows.stop - 1
            assert helpers.rel_err(packed.features[last], alone.features[-1]) > 1e-4, (
                f"segment {i} of {lengths}: the official padding leak is not reproduced"
            )
        else:
            helpers.assert_close(packed.features[rows], alone.features, 1e-5, f"segment {i} of {lengths} features")
            np.testing.assert_array_equal(packed.codes[:, rows], alone.codes, err_msg=f"segment {i} of {lengths}")


# ---------------------------------------------------------------------------------------------------------------
# Residual vector quantizer
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def rvq_cases(draw):
    """(vq params with Q levels of drawn sizes, x ``[B, T, D]`` float32 at the scale of LayerNorm'd features)."""
    d = draw(st.sampled_from([4, 16]))
    sizes = draw(st.lists(st.sampled_from([1, 2, 8, 32]), min_size=1, max_size=5))
    rng = np.random.default_rng(draw(mst.seeds()))
    vq = {"layers": [{"_codebook": {"embed": jnp.asarray(rng.standard_normal((v, d)).astype(np.float32))}}
                     for v in sizes]}  # fmt: skip
    x = (rng.standard_normal((2, 7, d)) * draw(st.sampled_from([0.5, 1.0, 3.0]))).astype(np.float32)
    return vq, x


@functools.partial(jax.jit, static_argnames=("n_q",))
def rvq_encode(vq, x: jax.Array, *, n_q: int) -> jax.Array:
    """``rvq.rvq_encode``, compiled once per codebook layout (looked up at trace time, so a patched one is used)."""
    return rvq.rvq_encode(vq, x, n_q=n_q)


@jax.jit
def rvq_decode(vq, codes: jax.Array) -> jax.Array:
    """``rvq.rvq_decode``, compiled once per codebook layout."""
    return rvq.rvq_decode(vq, codes)


def codebooks(vq) -> list[np.ndarray]:
    return [np.asarray(level["_codebook"]["embed"], np.float64) for level in vq["layers"]]


@given(case=rvq_cases())
def test_rvq_decode_of_encode_is_the_sum_of_the_chosen_codewords(case):
    """``rvq_decode(rvq_encode(x))`` is ``sum_q codebook_q[code_q]`` (float32 sum of the chosen rows)."""
    vq, x = case
    codes = np.asarray(rvq_encode(vq, jnp.asarray(x), n_q=len(vq["layers"])))  # [Q, B, T]
    expected = sum(book[codes[q]] for q, book in enumerate(codebooks(vq)))  # [B, T, D]
    decoded = rvq_decode(vq, jnp.asarray(codes))
    assert decoded.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(decoded), expected, rtol=1e-6, atol=1e-6)


@given(case=rvq_cases())
def test_rvq_each_code_is_the_nearest_codeword_to_its_residual(case):
    """Level q's code is the codeword nearest (squared Euclidean) to the residual ``x - sum_{p<q} e_p[c_p]``, up to
    exact ties (the distances are float32: a codeword within float32 rounding of the minimum may win)."""
    vq, x = case
    codes = np.asarray(rvq_encode(vq, jnp.asarray(x), n_q=len(vq["layers"])))
    residual = x.astype(np.float64)
    for q, book in enumerate(codebooks(vq)):
        dist = np.sum((residual[..., None, :] - book) ** 2, axis=-1)  # [B, T, V]
        chosen = np.take_along_axis(dist, codes[q][..., None], axis=-1)[..., 0]
        slack = 1e-5 * (np.sum(residual**2, axis=-1) + np.max(np.sum(book**2, axis=-1)))  # float32 rounding
        assert (chosen <= dist.min(axis=-1) + slack).all(), f"level {q}: a nearer codeword exists"
        residual = residual - book[codes[q]]


@given(case=rvq_cases(), n_q=st.integers(1, 5))
def test_rvq_fewer_levels_are_a_prefix_of_more_levels(case, n_q):
    """Encoding with n_q levels gives exactly the first n_q rows of encoding with all Q levels."""
    vq, x = case
    levels = len(vq["layers"])
    n_q = min(n_q, levels)
    full = np.asarray(rvq_encode(vq, jnp.asarray(x), n_q=levels))
    np.testing.assert_array_equal(np.asarray(rvq_encode(vq, jnp.asarray(x), n_q=n_q)), full[:n_q])


# ---------------------------------------------------------------------------------------------------------------
# ISTFT
# ---------------------------------------------------------------------------------------------------------------

istft_jit = jax.jit(istft, static_argnames=("hop",))


@given(
    fft_hop=st.sampled_from([(16, 4), (12, 4), (64, 16), (960, 240)]),
    frames=st.sampled_from([1, 3, 8]),
    padding_frames=st.sampled_from([0, 2]),
    seed=mst.seeds(),
)
def test_istft_inverts_the_same_padded_stft(fft_hop, frames, padding_frames, seed):
    """For a signal x of ``T * hop`` samples, the "same"-padded STFT (frame f covers samples
    ``[f hop - (n_fft - hop) / 2, +n_fft)``, zero outside x, periodic Hann) inverts back to x over the whole
    trimmed output, and frames past ``frames`` (bucket padding, garbage here) change nothing."""
    n_fft, hop = fft_hop
    pad = (n_fft - hop) // 2
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(frames * hop)
    window = periodic_hann(n_fft).astype(np.float64)
    padded = np.pad(x, (pad, n_fft))
    spec = np.stack([np.fft.rfft(padded[f * hop : f * hop + n_fft] * window) for f in range(frames)], axis=-1)
    garbage = rng.standard_normal((n_fft // 2 + 1, padding_frames)) + 1j * rng.standard_normal(
        (n_fft // 2 + 1, padding_frames)
    )
    spec = np.concatenate([spec, garbage], axis=-1)[None].astype(np.complex64)  # [1, n_freq, T + padding]
    y = np.asarray(istft_jit(jnp.asarray(spec), jnp.asarray(window.astype(np.float32)), frames, hop=hop))
    np.testing.assert_allclose(y[0, : frames * hop], x, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Causal and windowed attention in the tokenizer's transformer stacks
# ---------------------------------------------------------------------------------------------------------------

STACK_T = 24


def stack_settings(cfg, name: str) -> tuple[list, int, bool, tuple[int, int]]:
    """(layer params, heads, causal, window) of the encoder, decoder or vocoder stack of a corner config."""
    params = params_for(cfg, 0)
    if name == "encoder":
        return params["encoder"]["layers"], cfg.encoder_heads, cfg.encoder_causal, cfg.encoder_window
    if name == "decoder":
        return params["decoder"]["layers"], cfg.decoder_heads, cfg.decoder_causal, cfg.decoder_window
    return params["decoder"]["vocoder"]["layers"], cfg.vocoder_heads, False, cfg.vocoder_window


def receptive_field(query: int, layers: int, causal: bool, window: tuple[int, int], t: int) -> tuple[int, int]:
    """Positions ``[lo, hi]`` that can reach query through ``layers`` windowed layers (each widens by the window)."""
    left, right = window[0], 0 if causal else window[1]
    lo = 0 if left < 0 else max(0, query - layers * left)
    hi = t - 1 if right < 0 else min(t - 1, query + layers * right)
    return lo, hi


@given(
    cfg=mst.audio_corner_configs(),
    name=st.sampled_from(["encoder", "decoder", "vocoder"]),
    own_mask=st.booleans(),
    window=st.sampled_from([(2, 1), (3, -1), (-1, 1)]),
    causal=st.booleans(),
    query=st.integers(0, STACK_T - 1),
    seed=mst.seeds(),
)
def test_stack_outputs_ignore_positions_outside_the_causal_window(cfg, name, own_mask, window, causal, query, seed):
    """In an L-layer stack with window (left, right) (right = 0 when causal), output i depends only on inputs in
    ``[i - L left, i + L right]``: changing every input outside leaves output i bit-identical. Checked with each
    stack's own config (the causal decoder, the windowed encoder/vocoder) and with drawn windows."""
    stack, heads, cfg_causal, cfg_window = stack_settings(cfg, name)
    if own_mask:
        causal, window = cfg_causal, cfg_window
    d = stack[0]["fc1"]["weight"].shape[1]
    lo, hi = receptive_field(query, len(stack), causal, window, STACK_T)
    outside = np.ones(STACK_T, bool)
    outside[lo : hi + 1] = False
    helpers.event(f"positions outside the receptive field: {bool(outside.any())}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, STACK_T, d)).astype(np.float32)
    changed = np.where(outside[None, :, None], rng.standard_normal(x.shape).astype(np.float32), x)
    mask = segment_mask(jnp.asarray([STACK_T]), STACK_T, causal=causal, window=window)
    before = np.asarray(helpers.audio_stack(stack, jnp.asarray(x), mask, heads=heads, theta=cfg.rope_theta))
    after = np.asarray(helpers.audio_stack(stack, jnp.asarray(changed), mask, heads=heads, theta=cfg.rope_theta))
    np.testing.assert_array_equal(before[:, query], after[:, query])
    if causal:  # causal: every output before the first changed input is unchanged too
        first = int(np.argmax(outside)) if outside.any() else STACK_T
        np.testing.assert_array_equal(before[:, :first], after[:, :first])


# ---------------------------------------------------------------------------------------------------------------
# float32 vs float64
# ---------------------------------------------------------------------------------------------------------------


@given(
    cfg=mst.audio_corner_configs(),
    lengths=mst.mel_lengths(max_frames=MAX_MEL_FRAMES, min_segments=SEGMENTS, max_segments=SEGMENTS),
    frames=st.integers(1, MAX_CODE_FRAMES),
    seed=mst.seeds(),
)
def test_float32_and_float64_tokenizer_agree(cfg, lengths, frames, seed):
    """The same params in float32 and float64 give the same encoder features and decoder outputs (coarse mel,
    wav) to float32 precision (relative 1e-4 of each output's scale). Codes are not compared: a float32 distance
    near-tie may pick either codeword (the nearest-codeword property covers the choice)."""
    params = params_for(cfg, 0)
    mels = np.zeros((SEGMENTS, MAX_MEL_FRAMES, cfg.n_mels), np.float32)
    source = mst.make_mels(cfg, sum(lengths), seed)
    for row, (start, n) in enumerate(zip(np.cumsum([0, *lengths[:-1]]), lengths, strict=True)):
        mels[row, :n] = source[start : start + n]
    codes = mst.make_codes(cfg.codebook_sizes, MAX_CODE_FRAMES, seed)[:, None, :]  # [Q, 1, Tb]
    lens = jnp.asarray(lengths, jnp.int32)
    code_lens = jnp.asarray([frames], jnp.int32)
    f32 = encode_padded(params["encoder"], jnp.asarray(mels), lens, cfg=cfg, n_q=cfg.num_quantizers)
    d32 = decode_padded(params, jnp.asarray(codes), code_lens, cfg=cfg)
    with jax.enable_x64(True):
        params64 = mst.cast_audio_params(params, jnp.float64)
        f64 = encode_padded(params64["encoder"], jnp.asarray(mels), lens, cfg=cfg, n_q=cfg.num_quantizers)
        d64 = decode_padded(params64, jnp.asarray(codes), code_lens, cfg=cfg)
        f64, d64 = jax.tree_util.tree_map(np.asarray, (f64, d64))
    for row, n in enumerate(np.asarray(f32[1])):
        helpers.assert_close(f32[0][row, :n], f64[0][row, :n], 1e-4, f"features of segment {row}")
    n = int(d32[2][0])
    helpers.assert_close(d32[1][:, :n], d64[1][:, :n], 1e-4, "coarse mel")
    helpers.assert_close(d32[3][..., : n * cfg.hop_length], d64[3][..., : n * cfg.hop_length], 1e-4, "wav")
    assert d64[3].dtype == np.float64
