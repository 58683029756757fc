"""``diffusekit audio inpaint`` (EzAudio, arXiv 2409.10819) on a generated chirp with the shipped events_ezaudio
asset: wav + PNG written, audio outside the range untouched, and one ``error:`` line for every bad input."""

import numpy as np
import pytest

from diffusekit.cli import main
from diffusekit.domains.audio.text2audio import pitched_clip
from diffusekit.domains.audio.wavio import read_wav, wav_bytes


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inpaint")
    wave, _, _ = pitched_clip(3, 0, kind="chirp_up")
    path = folder / "chirp.wav"
    path.write_bytes(wav_bytes(wave[:24000]))  # 1.5 s
    return path


def test_inpaint_writes_wav_and_png_and_keeps_the_audio_outside_the_range(clip, tmp_path, capsys):
    out = tmp_path / "filled.wav"
    rc = main(["audio", "inpaint", "--input", str(clip), "--start", "0.7", "--end", "1.1", "--caption",
               "a rising chirp", "--steps", "6", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert out.is_file() and out.with_suffix(".png").is_file()
    original, filled = read_wav(clip), read_wav(out)
    assert filled.shape == original.shape
    t = np.arange(original.size) / 16000
    outside = (t < 0.69) | (t >= 1.11)
    assert float(np.abs(filled[outside] - original[outside]).max()) <= 2.0 / 32767
    inside = (t >= 0.72) & (t < 1.08)
    assert float(np.abs(filled[inside] - original[inside]).mean()) > 1e-3  # the range was regenerated
    assert float(np.sqrt(np.mean(filled[inside] ** 2))) > 0.02  # ... with sound, not silence
    # nothing is overwritten without --overwrite
    assert main(["audio", "inpaint", "--input", str(clip), "--start", "0.7", "--end", "1.1", "--out", str(out),
                 "--no-progress"]) == 2
    assert "already exists" in _error_line(capsys)


def test_bad_inputs_end_in_one_error_line(clip, tmp_path, capsys):
    from scipy.io import wavfile

    slow = tmp_path / "slow.wav"
    wavfile.write(str(slow), 8000, np.zeros(8000, dtype=np.int16))
    long = tmp_path / "long.wav"
    long.write_bytes(wav_bytes(np.zeros(16000 * 3, dtype=np.float32)))
    out = str(tmp_path / "x.wav")
    cases = [
        (["--input", str(tmp_path / "missing.wav"), "--start", "0.2", "--end", "0.5"], "does not exist"),
        (["--input", str(slow), "--start", "0.2", "--end", "0.5"], "16000 Hz"),
        (["--input", str(clip), "--start", "0.9", "--end", "0.5"], "before --end"),
        (["--input", str(clip), "--start", "0.9", "--end", "1.8"], "past the end"),
        (["--input", str(long), "--start", "0.2", "--end", "0.5"], "at most"),
        (["--input", str(clip), "--start", "0.2", "--end", "0.5", "--model", "zoo:digits_unet"], "EzAudio"),
        (["--input", str(clip), "--start", "0.2", "--end", "0.5", "--caption", "a purple elephant"], "does not know"),
        (["--input", str(clip), "--start", "0.2", "--end", "0.5", "--steps", "0"], "--steps"),
    ]
    for args, expected in cases:
        assert main(["audio", "inpaint", *args, "--out", out, "--no-progress"]) == 2, args
        assert expected in _error_line(capsys), args
    assert not (tmp_path / "x.wav").exists() and not (tmp_path / "x.png").exists()
