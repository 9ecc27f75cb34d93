"""The text tokenizer of a MiMo-Audio checkpoint, and the official decoding of the generated text channel.

The official wrapper loads the checkpoint's tokenizer with ``transformers.AutoTokenizer`` (a
``PreTrainedTokenizerFast`` around ``tokenizer.json``). Everything it does with it reduces to the ``tokenizers``
library, which this module uses directly:

- encoding: official ``InputSegment`` calls ``tokenizer(text, add_special_tokens=False, truncation=True,
  max_length=999999, padding=False)``, i.e. the backend's ``encode(text, add_special_tokens=False)`` with no
  padding and (effectively) no truncation;
- decoding: ``tokenizer.decode(ids, skip_special_tokens=False)`` is the backend's ``decode`` followed by
  ``clean_up_tokenization`` only when ``tokenizer_config.json`` asks for it (transformers 4.49 defaults to no
  clean-up; the real MiMo-Audio tokenizer sets ``clean_up_tokenization_spaces: false``).

Special-token ids come from ``tokenizer.json`` through :func:`mimo_ref.config.load_special_tokens`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers

from mimo_ref.config import ConfigError, SpecialTokens, load_special_tokens, read_json

# Strings the official `forward()` deletes from the decoded text channel, in its order.
TEXT_CHANNEL_REMOVED = ("<|empty|>", "<|eot|>", "<|eostm|>")


@dataclasses.dataclass(frozen=True, eq=False)
class TextTokenizer:
    """A checkpoint's text tokenizer: the ``tokenizers`` backend plus the settings the official code reads.

    ``backend`` is only read after loading (encode/decode do not change it), so sharing one instance is safe.
    """

    backend: tokenizers.Tokenizer
    special: SpecialTokens
    eos_id: int | None  # tokenizer_config.json `eos_token` (official stop token `tokenizer.eos_token_id`)
    clean_up_tokenization_spaces: bool  # tokenizer_config.json; transformers 4.49 default False
    folder: Path

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` exactly as the official prompt segments tokenize it (no special tokens added)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids``, special tokens kept (official ``tokenizer.decode(ids, skip_special_tokens=False)``)."""
        text = self.backend.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False)
        if self.clean_up_tokenization_spaces:
            text = clean_up_tokenization(text)
        return text


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: drop the space before simple punctuation and English clitics."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text


def token_content(value, path: Path, name: str) -> str | None:
    """A special token of ``tokenizer_config.json``: a string, an AddedToken dict, or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ConfigError(f"{path}: `{name}` must be a string or a {{'content': ...}} object, found {value!r}")


def load_text_tokenizer(folder: str | Path) -> TextTokenizer:
    """Load ``tokenizer.json`` (and ``tokenizer_config.json`` if present) from a checkpoint folder."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: the LM checkpoint folder must hold its text tokenizer")
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust loader raises a bare Exception on malformed files
        raise ConfigError(f"{path} is not a valid `tokenizers` file ({exc})") from exc
    # official: padding=False and truncation at 999999 tokens, i.e. neither applies to one prompt segment
    backend.no_padding()
    backend.no_truncation()
    special = load_special_tokens(folder)

    cfg_path = folder / "tokenizer_config.json"
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    eos_text = token_content(cfg.get("eos_token"), cfg_path, "eos_token")
    eos_id = None
    if eos_text is not None:
        eos_id = backend.token_to_id(eos_text)
        if eos_id is None:
            raise ConfigError(f"{cfg_path}: eos_token {eos_text!r} is not in {path}")
    clean_up = cfg.get("clean_up_tokenization_spaces", False)
    if not isinstance(clean_up, bool):
        raise ConfigError(f"{cfg_path}: `clean_up_tokenization_spaces` must be true/false, found {clean_up!r}")
    return TextTokenizer(
        backend=backend, special=special, eos_id=eos_id, clean_up_tokenization_spaces=clean_up, folder=folder
    )


def decode_text_channel(tokenizer: TextTokenizer, ids: np.ndarray, *, prompt_length: int, group_size: int) -> str:
    """The text the official ``MimoAudio.forward()`` returns for a generation.

    Args:
      tokenizer: the checkpoint's text tokenizer.
      ids: ``[C+1, L]`` int, prompt and generated columns (official ``generate()`` output, reshaped); row 0 holds
        each group's text token repeated over its G columns.
      prompt_length: number of prompt columns (history included) to skip.
      group_size: G.

    Returns:
      The generated groups' text tokens, **without the last group's** (official ``[:-1]``: usually the stop
      token), decoded with special tokens kept, then stripped, then with ``<|empty|>``, ``<|eot|>`` and
      ``<|eostm|>`` deleted. The strip comes before the deletions (official order), so whitespace next to a
      deleted token survives, and other special tokens (``<|endoftext|>``, ``<|sostm|>``, ...) stay in the text.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids must be [C+1, L], got shape {ids.shape}")
    if not 0 <= prompt_length <= ids.shape[1]:
        raise ValueError(f"prompt_length {prompt_length} is outside the {ids.shape[1]} columns of ids")
    text_ids = ids[0, prompt_length::group_size][:-1]  # [L_new] -> [L_new / G - 1]
    text = tokenizer.decode(text_ids).strip()
    for token in TEXT_CHANNEL_REMOVED:
        text = text.replace(token, "")
    return text
