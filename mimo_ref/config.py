"""Configurations of the MiMo-Audio LM, built from a checkpoint folder's ``config.json``.

One frozen dataclass per component (STYLE rule 3):

- :class:`QwenStackConfig`: one Qwen2 transformer stack (the backbone, the patch decoder or the patch encoder).
- :class:`LMConfig`: the whole MiMo-Audio LM: the backbone stack, the two local stacks derived exactly as the
  official ``MiMoAudioConfig.local_config()`` / ``input_local_config()`` derive them, and the speech fields.
- :class:`SpecialTokens`: ids of ``<|empty|>``, ``<|sosp|>``, ... read from the text tokenizer, never constants.

All are hashable, so they can be static arguments of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file is missing, unreadable, or lacks / mangles a field."""


@dataclasses.dataclass(frozen=True)
class QwenStackConfig:
    """One Qwen2 decoder stack: RMSNorm pre-norm layers, GQA attention with q/k/v bias, SwiGLU MLP."""

    hidden_size: int  # D
    num_layers: int  # L
    num_heads: int  # N
    num_kv_heads: int  # K
    head_dim: int  # H
    intermediate_size: int  # F
    rope_theta: float
    rms_norm_eps: float


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """MiMo-Audio LM (official ``MiMoAudioConfig``), all fields the official model reads.

    ``local`` is the patch decoder ("local transformer"), ``input_local`` the patch encoder ("input local
    transformer"). Both inherit ``rope_theta`` and ``rms_norm_eps`` from the backbone, use as many KV heads as
    query heads, and ``head_dim = hidden // heads`` (official ``local_config()`` / ``input_local_config()``);
    the patch encoder's FFN width is ``4 * input_local_dim``.
    """

    vocab_size: int  # V
    backbone: QwenStackConfig
    local: QwenStackConfig
    input_local: QwenStackConfig
    max_position_embeddings: int
    tie_word_embeddings: bool
    speech_vocab_sizes: tuple[int, ...]  # per channel, length C
    speech_empty_ids: tuple[int, ...]  # per channel, length C
    delay_pattern: tuple[int, ...]  # per channel, length C
    group_size: int  # G
    audio_channels: int  # C
    input_full_attention: bool  # patch encoder attention: bidirectional (True) or causal
    # The compute dtype (a run setting, not a config.json field): set by `load_lm` from its precision. None means
    # "the dtype the params are held in" (params already cast to the compute dtype, e.g. by a test).
    compute_dtype: str | None = None

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    @property
    def local_dim(self) -> int:
        return self.local.hidden_size

    @property
    def input_local_dim(self) -> int:
        return self.input_local.hidden_size

    @property
    def local_steps(self) -> int:
        """Patch-decoder steps per group: ``G + max(delay)`` (11 for the real model)."""
        return self.group_size + max(self.delay_pattern)


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Special text-token ids, read from the checkpoint's text tokenizer."""

    empty: int  # <|empty|>: a group whose text id is this is a speech group
    sosp: int  # <|sosp|>: start of (input) speech
    eosp: int  # <|eosp|>: end of (input) speech
    sostm: int  # <|sostm|>: start of generated speech stream
    eostm: int  # <|eostm|>: end of generated speech stream
    eot: int  # <|eot|>
    im_start: int  # <|im_start|>
    im_end: int  # <|im_end|>
    endoftext: int  # <|endoftext|>


SPECIAL_TOKEN_STRINGS = {
    "empty": "<|empty|>",
    "sosp": "<|sosp|>",
    "eosp": "<|eosp|>",
    "sostm": "<|sostm|>",
    "eostm": "<|eostm|>",
    "eot": "<|eot|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "endoftext": "<|endoftext|>",
}


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path`` with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: the checkpoint folder needs it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); restore the file from the checkpoint") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], path: Path, default: Any = ...) -> Any:
    """``data[name]`` checked to be of ``kind``; errors name the field and the file.

    ``bool`` is never accepted where a number is asked for. ``default`` (if given) is used only when the field
    is absent, and only for fields whose official default is documented at the call site.
    """
    if name not in data:
        if default is ...:
            raise ConfigError(f"{path} has no `{name}`; add it (see the real checkpoint's config.json)")
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{path}: `{name}` must be {'/'.join(k.__name__ for k in kinds)}, found {value!r}")
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds):
        raise ConfigError(f"{path}: `{name}` must be {'/'.join(k.__name__ for k in kinds)}, found {value!r}")
    return value


def parse_channel_list(value: Any, channels: int, name: str, path: Path) -> tuple[int, ...]:
    """Parse an ``"a-b-c"`` per-channel string (or one int for every channel), as the official config does."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * channels
    if isinstance(value, str):
        try:
            items = tuple(int(s) for s in value.split("-"))
        except ValueError as exc:
            raise ConfigError(f"{path}: `{name}` must look like '1025-1025-129', found {value!r}") from exc
        if len(items) == 1:
            return items * channels
        if len(items) != channels:
            raise ConfigError(f"{path}: `{name}` has {len(items)} entries but audio_channels is {channels}")
        return items
    raise ConfigError(f"{path}: `{name}` must be a '-'-separated string or an int, found {value!r}")


def lm_config_from_dict(data: dict[str, Any], path: Path = Path("config.json")) -> LMConfig:
    """Build an :class:`LMConfig` from the HF ``config.json`` dict of a MiMo-Audio LM checkpoint."""

    def f(name: str, kind, default=...):
        return field(data, name, kind, path, default)

    hidden = f("hidden_size", int)
    heads = f("num_attention_heads", int)
    rope_theta = f("rope_theta", float)
    eps = f("rms_norm_eps", float)
    backbone = QwenStackConfig(
        hidden_size=hidden,
        num_layers=f("num_hidden_layers", int),
        num_heads=heads,
        num_kv_heads=f("num_key_value_heads", int),
        # official MiMoAudioConfig default head_dim is 128 (it does not derive it from hidden_size)
        head_dim=f("head_dim", int),
        intermediate_size=f("intermediate_size", int),
        rope_theta=rope_theta,
        rms_norm_eps=eps,
    )
    channels = f("audio_channels", int)
    local_dim = f("local_dim", int)
    local_heads = f("local_attn_heads", int)
    # official: input_local_dim = config.input_local_dim or local_dim (null means "same as local_dim")
    input_local_dim = f("input_local_dim", (int, type(None)), None) or local_dim
    for name, width in (("local_dim", local_dim), ("input_local_dim", input_local_dim)):
        if width % local_heads or (width // local_heads) % 2:
            raise ConfigError(
                f"{path}: `{name}` ({width}) must be `local_attn_heads` ({local_heads}) times an even head dim "
                "(RoPE rotates pairs of dimensions)"
            )
    if backbone.head_dim % 2:
        raise ConfigError(f"{path}: `head_dim` ({backbone.head_dim}) must be even (RoPE rotates pairs of dimensions)")
    local = QwenStackConfig(
        hidden_size=local_dim,
        num_layers=f("local_layers", int),
        num_heads=local_heads,
        num_kv_heads=local_heads,
        head_dim=local_dim // local_heads,
        intermediate_size=f("local_ffn_dim", int),
        rope_theta=rope_theta,
        rms_norm_eps=eps,
    )
    input_local = QwenStackConfig(
        hidden_size=input_local_dim,
        num_layers=f("input_local_layers", int),
        num_heads=local_heads,
        num_kv_heads=local_heads,
        head_dim=input_local_dim // local_heads,
        intermediate_size=4 * input_local_dim,
        rope_theta=rope_theta,
        rms_norm_eps=eps,
    )
    vocab_sizes = parse_channel_list(f("speech_vocab_size", (str, int)), channels, "speech_vocab_size", path)
    empty_ids = parse_channel_list(f("speech_zeroemb_idx", (str, int)), channels, "speech_zeroemb_idx", path)
    delays = parse_channel_list(f("delay_pattern", (str, int)), channels, "delay_pattern", path)
    for c, (size, empty) in enumerate(zip(vocab_sizes, empty_ids, strict=True)):
        if not 0 <= empty < size:
            raise ConfigError(f"{path}: channel {c} empty id {empty} is outside its vocabulary of {size}")
    if min(delays) < 0:
        raise ConfigError(f"{path}: `delay_pattern` has a negative delay: {delays}")
    full = f("input_full_attention", (bool, type(None)), None)
    return LMConfig(
        vocab_size=f("vocab_size", int),
        backbone=backbone,
        local=local,
        input_local=input_local,
        max_position_embeddings=f("max_position_embeddings", int),
        # transformers' Qwen2Config default is tie_word_embeddings=False; MiMo-Audio keeps lm_head separate
        tie_word_embeddings=f("tie_word_embeddings", bool, False),
        speech_vocab_sizes=vocab_sizes,
        speech_empty_ids=empty_ids,
        delay_pattern=delays,
        group_size=f("group_size", int),
        audio_channels=channels,
        # official: `is_causal=not input_full_attention`, so null (None) means causal
        input_full_attention=bool(full),
    )


def load_lm_config(folder: str | Path) -> LMConfig:
    """Read ``config.json`` of an LM checkpoint folder."""
    path = Path(folder) / "config.json"
    return lm_config_from_dict(read_json(path), path)


def load_special_tokens(folder: str | Path) -> SpecialTokens:
    """Special token ids from ``tokenizer.json`` (its ``added_tokens``) in ``folder``.

    ``special_tokens.json`` (written beside the tiny test checkpoints) is read only when there is no
    ``tokenizer.json``; when both exist they must agree.
    """
    folder = Path(folder)
    tok_path = folder / "tokenizer.json"
    alt_path = folder / "special_tokens.json"
    ids: dict[str, int] = {}
    if tok_path.is_file():
        added = read_json(tok_path).get("added_tokens")
        if not isinstance(added, list):
            raise ConfigError(f"{tok_path} has no `added_tokens` list; it is not a Qwen2-style tokenizer.json")
        by_content = {t.get("content"): t.get("id") for t in added if isinstance(t, dict)}
        missing = [s for s in SPECIAL_TOKEN_STRINGS.values() if s not in by_content]
        if missing:
            raise ConfigError(f"{tok_path} lacks the special tokens {missing}; MiMo-Audio needs all of them")
        ids = {name: int(by_content[s]) for name, s in SPECIAL_TOKEN_STRINGS.items()}
    if alt_path.is_file():
        alt = read_json(alt_path)
        if ids:
            for name, value in alt.items():
                if name in ids and ids[name] != value:
                    raise ConfigError(f"{alt_path}: `{name}`={value} disagrees with {tok_path} ({ids[name]})")
        else:
            missing = [n for n in SPECIAL_TOKEN_STRINGS if n not in alt]
            if missing:
                raise ConfigError(f"{alt_path} lacks {missing}")
            ids = {n: int(alt[n]) for n in SPECIAL_TOKEN_STRINGS}
    if not ids:
        raise ConfigError(f"{folder} has neither tokenizer.json nor special_tokens.json: special ids are unknown")
    return SpecialTokens(**ids)
