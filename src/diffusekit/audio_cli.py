"""``diffusekit audio``: speech and sound from the audio models we ship.

    diffusekit audio tts --text "seven green apples" [--model zoo:speech_prodiff] --out x.wav
    diffusekit audio text2audio --caption "a rising chirp" [--model zoo:events_auffusion] --out x.wav
    diffusekit audio inpaint --input in.wav --start 0.6 --end 1.2 [--model zoo:events_ezaudio] --out x.wav

Each sub-command writes the wav (16 kHz, 16-bit PCM) and a spectrogram PNG beside it (``x.png``), both
atomically; nothing is overwritten without ``--overwrite``. The sub-commands live in ``domains.audio.cli_*``
(each with HELP, add_arguments and run).
"""

from __future__ import annotations

HELP = "text-to-speech, text-to-audio and audio inpainting with the shipped audio models (writes wav + PNG)"
SUBCOMMANDS = {"tts": "diffusekit.domains.audio.cli_tts",
               "text2audio": "diffusekit.domains.audio.cli_text2audio",
               "inpaint": "diffusekit.domains.audio.cli_inpaint"}


def add_arguments(parser) -> None:
    from .cli_groups import add_subcommands

    add_subcommands(parser, "audio_command", SUBCOMMANDS)


def run(args) -> int:
    from .cli_groups import run_subcommand

    return run_subcommand(args, "audio_command", SUBCOMMANDS)
