"""mimo-ref: a pure-functional JAX reference implementation of MiMo-Audio.

Modules, from the bottom up: ``layers`` (shared layers), ``config`` and ``checkpoint`` (configs, strict loading),
``lm`` (input embedding, Qwen2 backbone, patch decoder), ``sampling`` and ``generate`` (the jitted decode loop),
``audio`` (the audio tokenizer), ``text``, ``templates``, ``prompts``, ``audio_io`` and ``pipeline`` (every official
task), ``cli`` (the ``mimo-ref`` command), ``verify`` (golden parity), ``tap`` / ``trace``
(activation dumps), ``bench``, ``testing`` (Hypothesis strategies for other ports). Start reading at docs/index.md.
"""
