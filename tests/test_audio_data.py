"""The audio data we make: the shipped espeak-ng speech corpus, procedural sound events, features and vocoding."""

import ctypes.util
import json
import shutil

import numpy as np
import pytest

from diffusekit.cli import main
from diffusekit.domains.audio import events, features, speech

HAS_ESPEAK = ctypes.util.find_library("espeak-ng") is not None


@pytest.fixture(scope="module")
def corpus():
    return speech.load_speech_corpus()


def test_shipped_corpus_loads_without_espeak_and_is_consistent(corpus, monkeypatch):
    def no_espeak(*args, **kwargs):
        raise speech.EspeakError("espeak-ng not found")

    monkeypatch.setattr(speech._Espeak, "get", no_espeak)
    assert len(speech.load_speech_corpus()) == len(corpus)  # loading never needs the engine
    assert len(corpus) == 240 and corpus.manifest["sample_rate"] == features.SAMPLE_RATE
    kinds = {u.kind for u in corpus.utterances}
    assert kinds == {"digit", "digits", "word", "sentence"}
    assert len({u.voice for u in corpus.utterances}) == len(speech.VOICES)
    for u in corpus.utterances:
        assert u.audio.dtype == np.int16 and u.audio.size > 1000
        b = np.asarray(u.boundaries)
        assert b[0] == 0 and b[-1] == u.audio.size and (np.diff(b) > 0).all()  # phonemes tile the audio
        assert len(u.phonemes) == len(b) - 1 and u.durations.sum() == u.audio.size
        assert np.abs(u.wave).max() > 0.05
    # a digit word's phonemes are the same for every voice of one accent family (espeak-ng's lexicon)
    sevens = {tuple(p for p in u.phonemes if not p.startswith("_")) for u in corpus.utterances
              if u.text == "seven" and u.voice.startswith("en-us")}
    assert len(sevens) == 1 and sevens.pop() == ("s", "E", "v", "@", "n")


def test_corrupted_corpus_is_refused(tmp_path):
    for f in speech.ASSET_DIR.iterdir():
        shutil.copy(f, tmp_path / f.name)
    weights = tmp_path / f"{speech.CORPUS_NAME}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the sha256"):
        speech.load_speech_corpus(tmp_path)
    with pytest.raises(FileNotFoundError, match="diffusekit data build speech"):
        speech.load_speech_corpus(tmp_path / "nothing")


@pytest.mark.skipif(not HAS_ESPEAK, reason="building the corpus needs the espeak-ng library")
def test_recipe_reproduces_the_shipped_corpus(tmp_path, corpus):
    """The first utterances built now equal the shipped ones sample for sample (same espeak-ng version)."""
    speech.espeak_synthesize("seven two", voice="en+f4")  # history in this process must not matter
    manifest = speech.build_speech_corpus(tmp_path, limit=4)
    if manifest["espeak_ng"] != corpus.manifest["espeak_ng"]:
        pytest.skip(f"espeak-ng {manifest['espeak_ng']} differs from the shipped corpus' version")
    rebuilt = speech.load_speech_corpus(tmp_path)
    for a, b in zip(rebuilt.utterances, corpus.utterances[:4]):
        assert (a.text, a.voice, a.rate, a.pitch, a.phonemes, a.boundaries) == (b.text, b.voice, b.rate, b.pitch,
                                                                                b.phonemes, b.boundaries)
        assert np.array_equal(a.audio, b.audio)


def test_data_cli_refuses_bad_requests_and_overwrites_only_when_asked(tmp_path, capsys):
    assert main(["data", "build", "music", "--out", str(tmp_path)]) != 0
    assert "unknown corpus 'music'; allowed: speech" in capsys.readouterr().err
    assert main(["data", "build", "speech", "--limit", "0", "--out", str(tmp_path)]) != 0
    (tmp_path / f"{speech.CORPUS_NAME}.json").write_text("{}")
    assert main(["data", "build", "speech", "--limit", "2", "--out", str(tmp_path)]) != 0
    assert "pass --overwrite" in capsys.readouterr().err
    assert json.loads((tmp_path / f"{speech.CORPUS_NAME}.json").read_text()) == {}  # untouched
    if HAS_ESPEAK:
        assert main(["data", "build", "speech", "--limit", "2", "--out", str(tmp_path), "--overwrite",
                     "--no-progress"]) == 0
        assert len(speech.load_speech_corpus(tmp_path)) == 2


def test_sound_events_are_deterministic_ordered_and_captioned():
    a, b = events.make_clips(6, seed=3), events.make_clips(6, seed=3)
    assert all(np.array_equal(x.wave, y.wave) and x.structured == y.structured for x, y in zip(a, b))
    assert np.array_equal(events.make_clip(3, 4).wave, a[4].wave)  # clip i does not depend on the count
    assert not np.array_equal(events.make_clip(4, 0).wave, a[0].wave)
    for clip in events.make_clips(30, seed=0):
        assert clip.wave.dtype == np.float32 and np.abs(clip.wave).max() <= 1.0 and clip.duration == 2.0
        onsets = [e.onset for e in clip.events]
        assert onsets == sorted(onsets) and all(x.offset <= y.onset for x, y in zip(clip.events, clip.events[1:]))
        parts = clip.structured.split("@")
        assert len(parts) == len(clip.events)
        assert [p[1:p.index("&")] for p in parts] == [events.EVENT_WORDS[e.kind] for e in clip.events]
        places = [p[p.index("&") + 2:-1] for p in parts]
        assert places == (["all"] if len(parts) == 1 else ["start", "end"])
        assert len(clip.caption.split(" then ")) == len(clip.events)
    with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
        events.make_clip(0, 0, kinds=("whistle",))


def test_true_f0_matches_pyin_and_onsets_follow_the_events():
    clip = events.make_clip(0, 0, num_events=1, kinds=("chirp_up",))
    f0, voiced, _ = features.f0_contour(clip.wave)
    times = np.arange(f0.size) * features.MelConfig().hop_length / features.SAMPLE_RATE
    truth = clip.events[0].f0_at(times)
    ok = voiced & ~np.isnan(truth)
    assert ok.sum() > 0.6 * (~np.isnan(truth)).sum()
    cents = np.abs(1200 * np.log2(f0[ok] / truth[ok]))
    assert np.median(cents) < 25  # a quarter semitone
    two = events.make_clip(1, 0, num_events=2, kinds=("noise_burst", "tone"))
    found = features.onset_times(two.wave)
    for e in two.events:
        assert np.min(np.abs(found - e.onset)) < 0.05


def test_mel_scaling_round_trips_and_griffin_lim_keeps_the_pitch():
    cfg = features.MelConfig()
    tone = events.synthesize_event(events.SoundEvent("tone", 0.0, 1.0, {"f0": 440.0, "harmonics": 1, "gain": 0.5}))
    m = features.log_mel(tone, cfg)
    assert m.shape == (cfg.n_mels, 1 + tone.size // cfg.hop_length)
    inside = (m > features.LOG_MIN) & (m < features.LOG_MAX)
    assert np.allclose(features.unscale_log_mel(features.scale_log_mel(m))[inside], m[inside], atol=1e-5)
    image = features.mel_image(tone, cfg)
    assert image.min() >= -1 and image.max() <= 1
    wave = features.griffin_lim(image, cfg, scaled=True, length=tone.size, n_iter=16)
    assert wave.shape == tone.shape and np.abs(wave).max() <= 1
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.fft.rfftfreq(wave.size, 1 / features.SAMPLE_RATE)[spectrum.argmax()] - 440) < 30
    noise = np.random.default_rng(0).normal(0, 0.1, tone.size)
    assert features.spectral_convergence(tone, wave) < features.spectral_convergence(tone, noise)
    assert features.log_spectral_distance(tone, tone) == 0.0


def test_wav_round_trip_and_spectrogram(tmp_path):
    import numpy as np

    from diffusekit.domains.audio.wavio import read_wav, write_wav_with_spectrogram
    from diffusekit.errors import UserError

    wave = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000).astype(np.float32)
    wav, png = write_wav_with_spectrogram(tmp_path / "x.wav", wave, title="440 Hz")
    assert png == tmp_path / "x.png" and png.read_bytes()[:4] == b"\x89PNG"
    back = read_wav(wav)
    assert np.abs(back - wave).max() < 1e-4
    with pytest.raises(UserError, match="overwrite"):
        write_wav_with_spectrogram(wav, wave)
    with pytest.raises(UserError, match=".wav"):
        write_wav_with_spectrogram(tmp_path / "x.mp3", wave)
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    with pytest.raises(UserError, match="not a readable wav"):
        read_wav(tmp_path / "bad.wav")
