"""Reading and writing the CLI's audio: 16 kHz mono 16-bit PCM wav files and a spectrogram PNG beside each.

``write_wav_with_spectrogram(path, wave)`` writes ``path`` (``x.wav``) and ``x.png`` (the log-mel spectrogram of
``features.log_mel``) atomically, after checking both can be written (and are not there, unless ``overwrite``).
``read_wav`` accepts 8/16/32-bit PCM or float wav files at 16 kHz, mono or stereo (averaged).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ...errors import UserError
from .features import SAMPLE_RATE, MelConfig, log_mel


def wav_bytes(wave, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A float wave in [-1, 1] as the bytes of a 16-bit PCM wav file."""
    from scipy.io import wavfile

    buf = io.BytesIO()
    wavfile.write(buf, int(sample_rate), (np.clip(np.asarray(wave, dtype=np.float64), -1, 1) * 32767).astype(np.int16))
    return buf.getvalue()


def read_wav(path: str | Path, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A wav file as a float32 mono wave in [-1, 1]; UserError when it is missing, unreadable or not ``sample_rate``."""
    from scipy.io import wavfile

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file; expected a .wav file")
    try:
        rate, data = wavfile.read(str(path))
    except (ValueError, OSError) as err:
        raise UserError(f"{path} is not a readable wav file ({err})") from None
    if rate != sample_rate:
        raise UserError(f"{path} is sampled at {rate} Hz; only {sample_rate} Hz wav files are supported")
    data = np.asarray(data)
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.dtype == np.uint8:
        wave = (data.astype(np.float32) - 128) / 128
    elif np.issubdtype(data.dtype, np.integer):
        wave = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    else:
        wave = data.astype(np.float32)
    if wave.size == 0:
        raise UserError(f"{path} holds no samples")
    return np.clip(wave, -1, 1)


def spectrogram_png_bytes(wave, *, title: str = "", config: MelConfig | None = None) -> bytes:
    """The log-mel spectrogram of ``wave`` (time in seconds, mel bins) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = config or MelConfig()
    mel = log_mel(wave, config)
    seconds = np.asarray(wave).size / config.sample_rate
    fig, ax = plt.subplots(figsize=(max(3.0, min(12.0, 2.5 * seconds + 1.5)), 2.8))
    im = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, mel.shape[0]))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, label="log mel")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def check_wav_output(path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """(wav path, png path) after checking both can be written; call before any work starts."""
    from ...io import check_output_file

    path = Path(path)
    if path.suffix.lower() != ".wav":
        raise UserError(f"--out must end in .wav, got {str(path)!r}")
    wav = check_output_file(path, overwrite=overwrite, what="--out")
    png = check_output_file(path.with_suffix(".png"), overwrite=overwrite, what="spectrogram PNG")
    return wav, png


def write_wav_with_spectrogram(path: str | Path, wave, *, title: str = "", overwrite: bool = False,
                               sample_rate: int = SAMPLE_RATE) -> tuple[Path, Path]:
    """Write ``path`` (wav) and the spectrogram PNG beside it, both atomically; returns their paths."""
    from ...io import atomic_write_bytes

    wav, png = check_wav_output(path, overwrite=overwrite)
    atomic_write_bytes(wav, wav_bytes(wave, sample_rate))
    atomic_write_bytes(png, spectrogram_png_bytes(wave, title=title))
    return wav, png


__all__ = ["check_wav_output", "read_wav", "spectrogram_png_bytes", "wav_bytes", "write_wav_with_spectrogram"]
