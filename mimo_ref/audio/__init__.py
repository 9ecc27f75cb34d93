"""MiMo-Audio-Tokenizer in JAX: 24 kHz waveform <-> 25 Hz residual-VQ codes (official ``MiMoAudioTokenizer``).

Public API (shapes: T frames, M mel bins, D model width, Q quantizer levels, C code levels given):

- ``load_audio_tokenizer(path_or_repo_id, precision="float32") -> (params, cfg)``
- ``log_mel(wave [samples], cfg, *, sample_rate) -> [T, M]``                       (``mel.py``)
- ``encode(params, mels [T, M], lengths, *, cfg, n_q=None, segments_per_call=None) -> EncodeResult`` (``encoder.py``)
- ``rvq_encode(vq_params, x [..., D], *, n_q) -> [n_q, ...]``, ``rvq_decode(vq_params, codes) -> [..., D]`` (``rvq.py``)
- ``decode(params, codes [C, T], *, cfg) -> DecodeResult``                          (``decoder.py``)
- ``vocoder(vocoder_params, mel [B, T, M], lengths [B], *, cfg) -> [B, 1, T * hop]``, ``istft(...)`` (``vocoder.py``)
- ``wav_to_codes(params, cfg, wave_24k, n_q) -> [n_q, T']``, ``codes_to_wav(params, cfg, codes [C, T]) -> [samples]``
  (``pipeline.py``: the official MimoAudio wrapper's segmentation and chunking; encoding in memory bounded by one
  60 s segment, whatever the length)
"""

from mimo_ref.audio.config import AudioTokenizerConfig, audio_config_from_dict, load_audio_config, param_shapes
from mimo_ref.audio.decoder import DecodeResult, audio_decoder, decode, decode_padded
from mimo_ref.audio.encoder import EncodeResult, encode, encode_padded, encoder_features
from mimo_ref.audio.load import load_audio_tokenizer
from mimo_ref.audio.mel import log_mel, mel_filterbank
from mimo_ref.audio.rvq import rvq_decode, rvq_encode
from mimo_ref.audio.vocoder import istft, istft_head, vocoder
from mimo_ref.audio.waveform import codes_to_wav, wav_to_codes

__all__ = [
    "AudioTokenizerConfig",
    "DecodeResult",
    "EncodeResult",
    "audio_config_from_dict",
    "audio_decoder",
    "codes_to_wav",
    "decode",
    "decode_padded",
    "encode",
    "encode_padded",
    "encoder_features",
    "istft",
    "istft_head",
    "load_audio_config",
    "load_audio_tokenizer",
    "log_mel",
    "mel_filterbank",
    "param_shapes",
    "rvq_decode",
    "rvq_encode",
    "vocoder",
    "wav_to_codes",
]
