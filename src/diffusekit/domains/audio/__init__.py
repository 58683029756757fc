"""Audio (issue 16): features and vocoding (``features``), procedural sound events with structured captions
(``events``) and the espeak-ng speech corpus we build and ship (``speech``)."""
