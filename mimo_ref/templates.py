"""Prompt strings of the official MiMo-Audio instruct prompts (official ``src/mimo_audio/templates.py`` and the
literal strings of ``mimo_audio.py``).

These are data, not code: they are part of the prompt specification and reproduced verbatim, because a single
changed character changes the token ids the model sees. Pools are tuples in the official order, because a
seeded draw (``random.Random(seed).choice(pool)``) picks by position.
"""

from __future__ import annotations

# Instructions appended after the audio of an ASR prompt (official `asr_zh_templates`).
ASR_ZH_TEMPLATES = (
    "请将这段语音转换为文字",
    "帮我识别这个音频文件中的内容",
    "把这段录音转成文本",
    "请转录这段语音",
    "将音频内容转换成文字格式",
    "识别并转写这段语音",
    "把语音内容写成文字",
    "转录这个音频片段",
    "将这段对话转换为文本",
    "麻烦帮我把这段录音整理成详细的文字记录",
)

# Official `asr_en_templates`.
ASR_EN_TEMPLATES = (
    "Please transcribe this audio file",
    "Convert this speech recording to text",
    "Transcribe the following voice message",
    "Turn this audio into readable text",
    "Please convert the recording to written format",
    "Transcribe what you hear in this audio",
    "Convert this spoken content to text",
    "Please write down what is said in this recording",
    "Transcribe this voice recording",
    "Could you please help me transcribe this important recording?",
    "Would you mind converting this voice message into a readable text format?",
    "I'd really appreciate it if you could turn this audio file into a written document",
)

# The official ASR prompt draws from both languages at once, whatever the audio's language: zh first, then en.
ASR_TEMPLATES = ASR_ZH_TEMPLATES + ASR_EN_TEMPLATES

# Instructions put before the text of a TTS prompt whose text has a CJK character (official `tts_zh_templates`).
TTS_ZH_TEMPLATES = (
    "请将这段文字转换为语音",
    "帮我把这个文本读出来",
    "将这些文字生成音频",
    "请朗读这段内容",
    "把这段话转换成语音文件",
    "生成这段文字的语音版本",
    "请用语音播报这些内容",
    "将文本转换为可听的音频",
    "帮我朗读这段文字",
    "把这些内容念出来",
)

# Official `tts_en_templates`: every other TTS text.
TTS_EN_TEMPLATES = (
    "Please convert this text to speech",
    "Turn this writing into audio",
    "Generate speech from this text",
    "Read this content out loud",
    "Convert these words to voice",
    "Create an audio version of this text",
    "Please vocalize this content",
    "Turn this text into audible format",
    "Help me convert this writing to speech",
    "Make this text into spoken audio",
)

# System message of a TTS prompt with a style instruction, or in free-form mode, without a voice prompt
# ("Generate speech following the given style instruction and text.").
TTS_STYLE_SYSTEM = "你需要根据指定的风格指令和文本内容来生成语音。"

# The same with a voice prompt, whose audio follows it ("... with the same timbre as the speech prompt.
# Your timbre should be:").
TTS_STYLE_VOICE_SYSTEM = "你需要根据指定的风格指令和文本内容来生成和语音prompt具有相同音色的语音。你的音色应该是："

# System message of a spoken dialogue with a voice prompt, whose audio follows it.
DIALOGUE_VOICE_SYSTEM = "Your voice should be:"

# The assistant turn's opening for text answers: an empty thinking block, or an open one when thinking is on.
NO_THINKING = "<think>\n\n</think>\n"
THINKING = "<think>\n"
