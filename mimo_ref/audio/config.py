"""Configuration of the MiMo-Audio-Tokenizer, built from a checkpoint folder's ``config.json``.

One frozen (hashable) dataclass, :class:`AudioTokenizerConfig`, holds every field the official
``MiMoAudioTokenizer`` reads, so it can be a static argument of ``jax.jit``. :func:`audio_config_from_dict` is
the only constructor from a config dict; tests derive tiny variants with ``dataclasses.replace``.

:func:`param_shapes` is the executable weight spec: the name and shape of every tensor the port reads, keyed
exactly like the checkpoint (official ``state_dict()`` names), minus the RVQ training buffers
(``cluster_size``, ``embed_avg``, ``inited``), which inference never reads and the loader ignores by name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mimo_ref.arith import ceil_div
from mimo_ref.config import ConfigError, field, read_json


@dataclasses.dataclass(frozen=True)
class AudioTokenizerConfig:
    """MiMo-Audio-Tokenizer (official ``MiMoAudioTokenizerConfig``): mel front end, encoder, RVQ, decoder, vocoder.

    Windows are ``(left, right)`` tuples with flash-attn semantics: query i sees keys ``[i - left, i + right]``
    of its own segment, a negative side is unbounded, causal forces ``right = 0``.
    """

    # Mel front end (official mimo_audio.py builds torchaudio's MelSpectrogram from these).
    sampling_rate: int  # Hz of the waveform in and out (24000)
    n_mels: int  # M
    nfft: int  # FFT size of the mel STFT and of the vocoder ISTFT
    hop_length: int  # samples per mel frame (240 -> 100 Hz)
    window_size: int  # STFT window length of the mel front end
    fmin: float  # Hz, lowest mel filter edge
    fmax: float  # Hz, highest mel filter edge (null in config.json -> sampling_rate // 2, as torchaudio)

    # Encoder.
    d_model: int  # D
    kernel_size: int  # conv stem kernel (padding is always 1, official)
    stride_size: int  # conv2 stride (2 -> 50 Hz)
    encoder_layers: int  # L
    encoder_heads: int  # N
    encoder_ffn_dim: int  # F
    encoder_skip_layer_id: int | None  # 1-based layer whose output is added before the final LayerNorm
    encoder_causal: bool
    encoder_window: tuple[int, int]
    avg_pooler: int  # down-sampling factor after the transformer (2 -> 25 Hz codes)

    # Residual vector quantizer.
    num_quantizers: int  # Q
    codebook_sizes: tuple[int, ...]  # rows of each level's codebook, length Q

    # Decoder.
    decoder_layers: int
    decoder_heads: int
    decoder_ffn_dim: int
    decoder_kernel_size: int  # dconv2 kernel
    decoder_stride_size: int  # dconv2 stride
    decoder_causal: bool
    decoder_window: tuple[int, int]

    # Vocoder (Vocos-style transformer + ISTFT head).
    vocoder_dim: int
    vocoder_intermediate_dim: int
    vocoder_layers: int
    vocoder_heads: int
    vocoder_window: tuple[int, int]  # never causal (official)

    rope_theta: float

    # Longest audio input, in seconds (official default 1800 when absent). The official code only sizes its RoPE
    # tables with it and never checks it; this port refuses longer inputs before encoding (docs/audio_io.md,
    # "Long audio"), which changes nothing for shorter ones.
    max_audio_seconds: float = 1800.0

    # Run settings (not config.json fields), set by `load_audio_tokenizer` from its precision:
    # compute_dtype None means "the dtype the params are held in"; bf16_buffers rounds the RoPE inv_freq of the
    # three transformers to bfloat16, as the official wrapper's `.bfloat16()` does (see mimo_ref/precision.py).
    compute_dtype: str | None = None
    bf16_buffers: bool = False

    @property
    def encoder_head_dim(self) -> int:
        return self.d_model // self.encoder_heads

    @property
    def decoder_head_dim(self) -> int:
        return self.d_model // self.decoder_heads

    @property
    def vocoder_head_dim(self) -> int:
        return self.vocoder_dim // self.vocoder_heads

    @property
    def samples_per_code(self) -> int:
        """Waveform samples the decoder makes per code frame: ``hop * avg_pooler * decoder_stride_size``
        (240 * 2 * 2 = 960 at 24 kHz; the encoder consumes ``hop * stride_size * avg_pooler``, equal for the real
        settings)."""
        return self.hop_length * self.avg_pooler * self.decoder_stride_size

    def encoder_output_length(self, mel_frames: int) -> int:
        """Frames after the conv stem: official ``get_output_length`` (conv1 pad 1, conv2 pad 1 stride s)."""
        conv1 = mel_frames + 3 - self.kernel_size
        return (conv1 + 2 - self.kernel_size) // self.stride_size + 1

    def code_length(self, mel_frames: int) -> int:
        """Code frames of a segment of ``mel_frames``: conv stem, then ``ceil(. / avg_pooler)``."""
        frames = self.encoder_output_length(mel_frames)
        return ceil_div(frames, self.avg_pooler)


def _window(data: dict[str, Any], name: str, path: Path, default: tuple[int, int]) -> tuple[int, int]:
    """A ``[left, right]`` attention window; null or absent means the official default."""
    value = data.get(name)
    if value is None:
        return default
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{path}: `{name}` must be a list of two ints [left, right], found {value!r}")
    return (int(value[0]), int(value[1]))


def _positive(value: int, name: str, path: Path) -> int:
    if value <= 0:
        raise ConfigError(f"{path}: `{name}` must be positive, found {value}")
    return value


def audio_config_from_dict(data: dict[str, Any], path: Path = Path("config.json")) -> AudioTokenizerConfig:
    """Build an :class:`AudioTokenizerConfig` from the ``config.json`` dict of a MiMo-Audio-Tokenizer checkpoint.

    Fields the real config.json carries are required. Defaults are used only where the official config class
    documents them for a null value (attention windows, ``fmax``, ``encoder_skip_layer_id``). Options the
    official code supports but this port does not (another norm, activation or RoPE type, the "center" ISTFT
    padding, no down-sampling, no quantizer) raise a :class:`ConfigError` instead of being guessed.
    """

    def f(name: str, kind, default=...):
        return field(data, name, kind, path, default)

    def pos(name: str) -> int:
        return _positive(f(name, int), name, path)

    for name, supported in (
        ("ln_type", "LayerNorm"),
        ("activation_function", "gelu"),
        ("rope_type", "default"),
        ("position_embedding_type", "rope"),
        ("vocoder_padding", "same"),
    ):
        value = f(name, str)
        if value != supported:
            raise ConfigError(f"{path}: `{name}` is {value!r}; this port implements only {supported!r}")

    sampling_rate = pos("sampling_rate")
    fmax = f("fmax", (float, type(None)), None)
    # official: torchaudio MelSpectrogram uses f_max = float(sample_rate // 2) when f_max is None
    fmax = float(sampling_rate // 2) if fmax is None else fmax

    num_quantizers = pos("num_quantizers")
    sizes = f("codebook_size", (list, int))
    if isinstance(sizes, int):
        sizes = [sizes]
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ConfigError(f"{path}: `codebook_size` must be a positive int or a list of them, found {sizes!r}")
    if len(sizes) > num_quantizers:
        raise ConfigError(f"{path}: `codebook_size` lists {len(sizes)} sizes for {num_quantizers} quantizers")
    # official ResidualVectorQuantization: a short list is extended with its last size
    sizes = tuple(sizes) + (sizes[-1],) * (num_quantizers - len(sizes))

    avg_pooler = pos("avg_pooler")
    if avg_pooler == 1:
        raise ConfigError(f"{path}: `avg_pooler` is 1 (no down-sampling layer); this port needs avg_pooler > 1")

    cfg = AudioTokenizerConfig(
        sampling_rate=sampling_rate,
        n_mels=pos("n_mels"),
        nfft=pos("nfft"),
        hop_length=pos("hop_length"),
        window_size=pos("window_size"),
        fmin=f("fmin", float),
        fmax=fmax,
        d_model=pos("d_model"),
        kernel_size=pos("kernel_size"),
        stride_size=pos("stride_size"),
        encoder_layers=pos("encoder_layers"),
        encoder_heads=pos("encoder_attention_heads"),
        encoder_ffn_dim=pos("encoder_ffn_dim"),
        # official default None: no skip connection (0.0 is added)
        encoder_skip_layer_id=f("encoder_skip_layer_id", (int, type(None)), None),
        encoder_causal=f("encoder_causal", bool),
        encoder_window=_window(data, "encoder_attn_window_size", path, (-1, -1)),
        avg_pooler=avg_pooler,
        num_quantizers=num_quantizers,
        codebook_sizes=sizes,
        decoder_layers=pos("decoder_layers"),
        decoder_heads=pos("decoder_attention_heads"),
        decoder_ffn_dim=pos("decoder_ffn_dim"),
        decoder_kernel_size=pos("decoder_kernel_size"),
        decoder_stride_size=pos("decoder_stride_size"),
        decoder_causal=f("decoder_causal", bool),
        decoder_window=_window(data, "decoder_attn_window_size", path, (-1, -1)),
        vocoder_dim=pos("vocoder_dim"),
        vocoder_intermediate_dim=pos("vocoder_intermediate_dim"),
        vocoder_layers=pos("vocoder_num_layers"),
        vocoder_heads=pos("vocoder_attention_heads"),
        # official default [40, 10] when null
        vocoder_window=_window(data, "vocoder_attn_window_size", path, (40, 10)),
        rope_theta=f("rope_theta", float),
        # official MiMoAudioTokenizerConfig default: max_audio_seconds=1800
        max_audio_seconds=f("max_audio_seconds", float, 1800.0),
    )
    _check(cfg, path)
    return cfg


def _check(cfg: AudioTokenizerConfig, path: Path) -> None:
    """Consistency checks that would otherwise surface as shape errors inside jit."""
    for width_name, heads_name, width, heads in (
        ("d_model", "encoder_attention_heads", cfg.d_model, cfg.encoder_heads),
        ("d_model", "decoder_attention_heads", cfg.d_model, cfg.decoder_heads),
        ("vocoder_dim", "vocoder_attention_heads", cfg.vocoder_dim, cfg.vocoder_heads),
    ):
        # RoPE rotates half-dims, so the head dim must be an even integer
        if width % heads or (width // heads) % 2:
            raise ConfigError(f"{path}: `{width_name}` ({width}) / `{heads_name}` ({heads}) must be an even head dim")
    if cfg.max_audio_seconds <= 0:
        raise ConfigError(f"{path}: `max_audio_seconds` must be positive, found {cfg.max_audio_seconds}")
    skip = cfg.encoder_skip_layer_id
    if skip is not None and not 1 <= skip <= cfg.encoder_layers:
        raise ConfigError(f"{path}: `encoder_skip_layer_id` {skip} is not a layer in 1..{cfg.encoder_layers}")
    if cfg.window_size > cfg.nfft:
        raise ConfigError(f"{path}: `window_size` ({cfg.window_size}) exceeds `nfft` ({cfg.nfft})")
    if cfg.nfft < 2 * cfg.hop_length or (cfg.nfft - cfg.hop_length) % 2:
        # the vocoder's "same" padding trims (nfft - hop) / 2 samples on each side
        raise ConfigError(f"{path}: `nfft` ({cfg.nfft}) - `hop_length` ({cfg.hop_length}) must be even and >= hop")
    if cfg.decoder_kernel_size < cfg.decoder_stride_size:
        raise ConfigError(f"{path}: `decoder_kernel_size` must be >= `decoder_stride_size`")
    if not 0 <= cfg.fmin < cfg.fmax <= cfg.sampling_rate / 2:
        raise ConfigError(f"{path}: need 0 <= fmin < fmax <= sampling_rate / 2, found {cfg.fmin}, {cfg.fmax}")


def load_audio_config(folder: str | Path) -> AudioTokenizerConfig:
    """Read ``config.json`` of a MiMo-Audio-Tokenizer checkpoint folder."""
    path = Path(folder) / "config.json"
    return audio_config_from_dict(read_json(path), path)


def param_shapes(cfg: AudioTokenizerConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the port reads: checkpoint name -> shape (PyTorch layouts).

    Equals the official ``state_dict()`` minus the RVQ training buffers ``cluster_size``, ``embed_avg`` and
    ``inited`` (see ``tests/test_audio_tokenizer.py::test_param_shapes_match_real_checkpoint``).
    """
    d, m, v = cfg.d_model, cfg.n_mels, cfg.vocoder_dim
    shapes: dict[str, tuple[int, ...]] = {}

    def layer(prefix: str, width: int, ffn: int) -> None:
        for proj in ("q_proj", "v_proj", "out_proj"):
            shapes[f"{prefix}.self_attn.{proj}.weight"] = (width, width)
            shapes[f"{prefix}.self_attn.{proj}.bias"] = (width,)
        shapes[f"{prefix}.self_attn.k_proj.weight"] = (width, width)  # official: k_proj has no bias
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{prefix}.{norm}.weight"] = (width,)
            shapes[f"{prefix}.{norm}.bias"] = (width,)
        shapes[f"{prefix}.fc1.weight"] = (ffn, width)
        shapes[f"{prefix}.fc1.bias"] = (ffn,)
        shapes[f"{prefix}.fc2.weight"] = (width, ffn)
        shapes[f"{prefix}.fc2.bias"] = (width,)

    def norm(prefix: str, width: int) -> None:
        shapes[f"{prefix}.weight"] = (width,)
        shapes[f"{prefix}.bias"] = (width,)

    shapes["encoder.conv1.weight"] = (d, m, cfg.kernel_size)
    shapes["encoder.conv1.bias"] = (d,)
    shapes["encoder.conv2.weight"] = (d, d, cfg.kernel_size)
    shapes["encoder.conv2.bias"] = (d,)
    for i in range(cfg.encoder_layers):
        layer(f"encoder.layers.{i}", d, cfg.encoder_ffn_dim)
    norm("encoder.layer_norm", d)
    # down_sample_layer is nn.Sequential(Conv1d, GELU): index 0 is the (bias-free) conv
    shapes["encoder.down_sample_layer.0.weight"] = (d, d, cfg.avg_pooler)
    norm("encoder.down_sample_norm", d)
    for i, size in enumerate(cfg.codebook_sizes):
        shapes[f"encoder.quantizer.vq.layers.{i}._codebook.embed"] = (size, d)

    # ConvTranspose1d weights are [in, out, k]
    shapes["decoder.dconv1.conv.weight"] = (d, d, cfg.avg_pooler)
    shapes["decoder.dconv1.conv.bias"] = (d,)
    norm("decoder.dconv1.norm", d)
    for i in range(cfg.decoder_layers):
        layer(f"decoder.layers.{i}", d, cfg.decoder_ffn_dim)
    norm("decoder.layer_norm", d)
    shapes["decoder.dconv2.conv.weight"] = (d, m, cfg.decoder_kernel_size)
    shapes["decoder.dconv2.conv.bias"] = (m,)
    norm("decoder.dconv2.norm", m)

    shapes["decoder.vocoder.embeddings.weight"] = (v, m)  # no bias
    for i in range(cfg.vocoder_layers):
        layer(f"decoder.vocoder.layers.{i}", v, cfg.vocoder_intermediate_dim)
    norm("decoder.vocoder.layer_norm", v)
    shapes["decoder.vocoder.head.out.weight"] = (cfg.nfft + 2, v)
    shapes["decoder.vocoder.head.out.bias"] = (cfg.nfft + 2,)
    # the ISTFT window is a persistent buffer of the checkpoint (a periodic Hann window); the port uses it
    shapes["decoder.vocoder.head.istft.window"] = (cfg.nfft,)
    return shapes
