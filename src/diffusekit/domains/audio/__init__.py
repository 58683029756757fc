"""Audio (issue 16): features and vocoding (``features``), procedural sound events with structured captions
(``events``), the espeak-ng speech corpus we build and ship (``speech``), TTS data plumbing (``tts``: phoneme
vocabulary, frame durations, length regulation) and text-to-audio helpers (``text2audio``)."""
