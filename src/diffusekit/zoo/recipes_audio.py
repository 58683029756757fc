"""Zoo recipes of the audio models (issue 16): ``speech_prodiff``, ``speech_vocoder`` and ``events_auffusion``.

* ``speech_prodiff``: ProDiff (Huang et al. 2022, arXiv 2207.06389; ``methods.prodiff``) on the whole shipped
  espeak-ng corpus: the 4-step x0 teacher and its progressively distilled 2-step student in one file (prefixes
  ``teacher.`` / ``student.``); the manifest carries the phoneme vocabulary, the voice / rate / pitch tables, the
  schedule and grids, and a lexicon (word -> espeak-ng phonemes per voice, from the corpus' one-word utterances,
  plus every utterance's whole text) so that synthesis needs no espeak-ng for in-corpus words.
* ``speech_vocoder`` (NOT shipped, not in ``zoo.MODELS``: it did not beat Griffin-Lim by the stated margins, see
  ``bench vocoder``; ``build_speech_vocoder`` writes it to any folder, ``audio tts --vocoder DIR/speech_vocoder.json``
  uses it): the Vocos / APNet-style vocoder of ``domains.audio.vocoder`` trained on the corpus and
  procedural event clips (see ``bench vocoder`` for whether it beats Griffin-Lim; it ships only if it does).
* ``events_auffusion``: the Auffusion text-to-audio UNet (Xue et al. 2024, arXiv 2401.01044; ``methods.auffusion``)
  on the pitched event clips of ``bench auffusion``, with its frozen text encoder (prefix ``text_encoder.``) and
  the tokenizer's vocabulary in the manifest.

Budgets: ``budget["kind"]`` "full" (the shipped assets) or "quick" (a few steps; a smoke test).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

PRODIFF_BUDGETS = {"full": {"hidden": 48, "channels": 48, "layers": 6, "teacher_steps": 1500, "distill_steps": 600},
                   "quick": {"hidden": 16, "channels": 16, "layers": 2, "teacher_steps": 4, "distill_steps": 2}}
VOCODER_BUDGETS = {"full": {"steps": 1500, "channels": 96, "layers": 4, "event_clips": 64},
                   "quick": {"steps": 4, "channels": 16, "layers": 1, "event_clips": 2}}
AUFFUSION_BUDGETS = {"full": {"train_clips": 1024, "steps": 1500, "eval_steps": 20},
                     "quick": {"train_clips": 32, "steps": 4, "eval_steps": 2}}
TEACHER_GRID = (1.0, 0.75, 0.5, 0.25, 0.0)
PAUSES = ("_", "_:")


def corpus_lexicon(corpus) -> dict:
    """{"words": {word: {voice: phonemes}}, "texts": {text: {voice: phonemes}}}: the espeak-ng phonemes of every
    one-word utterance without its leading / trailing pauses (the word's pronunciation in that voice), and of every
    utterance's whole text as spoken."""
    words, texts = {}, {}
    for u in corpus.utterances:
        texts.setdefault(u.text, {}).setdefault(u.voice, list(u.phonemes))
        if len(u.text.split()) == 1:
            core = list(u.phonemes)
            while core and core[0] in PAUSES:
                core = core[1:]
            while core and core[-1] in PAUSES:
                core = core[:-1]
            words.setdefault(u.text, {}).setdefault(u.voice, core)
    return {"words": words, "texts": texts}


@dataclass
class SpeechModel:
    """The loaded ``speech_prodiff`` asset: teacher (4 steps) and distilled student (2 steps), their schedule and
    grids, the phoneme vocabulary, style tables (voices, rates, pitches) and lexicon."""

    teacher: torch.nn.Module
    student: torch.nn.Module
    schedule: object
    teacher_grid: torch.Tensor
    student_grid: torch.Tensor
    vocabulary: object
    voices: list
    rates: list
    pitches: list
    lexicon: dict
    meta: dict = field(default_factory=dict)


def build_speech_prodiff(budget: dict, assets_dir: Path, progress: bool) -> dict:
    """Train the ProDiff teacher on all corpus utterances, distil it 4 -> 2 steps, evaluate both (mel L1 with
    ground-truth durations on every 10th utterance) and write ``speech_prodiff``."""
    from ..core import VPLinear
    from ..domains.audio.speech import PITCHES, RATES, VOICES, load_speech_corpus
    from ..domains.audio.tts import PhonemeVocabulary, tts_tensors
    from ..methods.prodiff import ProDiffTTS, distill_student, mel_l1, synthesize, train_teacher
    from ..training import TrainConfig
    from . import write_asset

    size = PRODIFF_BUDGETS[budget["kind"]]
    corpus = load_speech_corpus()
    vocab = PhonemeVocabulary(corpus.phoneme_inventory())
    data = tts_tensors(corpus.utterances, vocab, voices=VOICES, rates=RATES, pitches=PITCHES)
    schedule = VPLinear(0.1, 40.0)
    ts4 = torch.tensor(TEACHER_GRID, dtype=torch.float64)

    def config(steps: int, lr: float, seed: int) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=16, lr=lr, ema_decay=None, warmup_steps=min(50, steps // 10),
                           seed=seed, progress=progress, log_every=max(1, steps // 10))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        teacher = ProDiffTTS(len(vocab), (len(VOICES), len(RATES), len(PITCHES)), hidden=size["hidden"],
                             channels=size["channels"], layers=size["layers"])
    t0 = time.perf_counter()
    train_teacher(teacher, schedule, ts4, data.data(), config(size["teacher_steps"], 2e-3, 0), window=48)
    student = distill_student(teacher, schedule, ts4, data.data(), config(size["distill_steps"], 5e-4, 1), window=48)
    seconds = time.perf_counter() - t0
    probe = data.subset(range(0, len(data), 10))
    metrics = {}
    for name, model, ts in (("teacher@4", teacher, ts4), ("student@2", student.model, student.ts)):
        mel, _ = synthesize(model, schedule, ts, probe.phonemes, probe.style, durations=probe.durations,
                            generator=torch.Generator().manual_seed(0))
        metrics[name] = {"mel_l1": float(mel_l1(mel, probe.mel, probe.frames).mean())}
    metrics["silence_mel_l1"] = float(mel_l1(torch.full_like(probe.mel, -1.0), probe.mel, probe.frames).mean())
    metrics["probe_utterances"] = len(probe)
    state = {**{f"teacher.{k}": v for k, v in teacher.state_dict().items()},
             **{f"student.{k}": v for k, v in student.model.state_dict().items()}}
    meta = {"kind": "tts", "net": teacher.config, "schedule": schedule.config(), "prediction": "x0",
            "teacher_grid": ts4.tolist(), "student_grid": student.ts.tolist(),
            "phonemes": vocab.symbols, "voices": list(VOICES), "rates": list(RATES), "pitches": list(PITCHES),
            "lexicon": corpus_lexicon(corpus), "training": {**size, "batch_size": 16, "window": 48,
                                                            "utterances": len(corpus)},
            "training_seconds": seconds, "metrics": metrics,
            "loader": "diffusekit.zoo.recipes_audio:load_speech_prodiff"}
    return write_asset("speech_prodiff", state, meta, assets_dir)


def load_speech_prodiff(state: dict, meta: dict) -> SpeechModel:
    """Rebuild ``speech_prodiff`` as a :class:`SpeechModel` (both networks load strictly, eval mode)."""
    from ..core import schedule_from_config
    from ..domains.audio.tts import PhonemeVocabulary
    from ..methods.prodiff import ProDiffTTS

    net = dict(meta["net"])
    num_phonemes, num_styles = net.pop("num_phonemes"), net.pop("num_styles")
    models = []
    for prefix in ("teacher.", "student."):
        model = ProDiffTTS(num_phonemes, num_styles, **net)
        model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        models.append(model.eval())
    return SpeechModel(models[0], models[1], schedule_from_config(meta["schedule"]),
                       torch.tensor(meta["teacher_grid"], dtype=torch.float64),
                       torch.tensor(meta["student_grid"], dtype=torch.float64), PhonemeVocabulary(meta["phonemes"]),
                       list(meta["voices"]), list(meta["rates"]), list(meta["pitches"]), meta["lexicon"], meta)


def vocoder_training_waves(event_clips: int, *, exclude_texts=()) -> list:
    """The vocoder's training audio: every corpus utterance whose text is not in ``exclude_texts`` and
    ``event_clips`` procedural event clips (``events.make_clips``, seed 5)."""
    from ..domains.audio.events import make_clips
    from ..domains.audio.speech import load_speech_corpus

    excluded = set(exclude_texts)
    waves = [u.wave for u in load_speech_corpus().utterances if u.text not in excluded]
    return waves + [clip.wave for clip in make_clips(event_clips, seed=5)]


def build_speech_vocoder(budget: dict, assets_dir: Path, progress: bool) -> dict:
    """Train the vocoder on the corpus (held-out texts of ``split_by_text`` excluded, so the bench's test set stays
    unseen) and event clips, and write ``speech_vocoder`` with its held-out figures against Griffin-Lim."""
    from ..domains.audio.speech import load_speech_corpus
    from ..domains.audio.tts import split_by_text
    from ..domains.audio.vocoder import train_vocoder, vocoder_segments
    from . import write_asset

    size = VOCODER_BUDGETS[budget["kind"]]
    corpus = load_speech_corpus()
    _, test = split_by_text(corpus.utterances, 0.1, seed=0)
    held = {corpus.utterances[i].text for i in test}
    mel, wave = vocoder_segments(vocoder_training_waves(size["event_clips"], exclude_texts=held))
    vocoder, info = train_vocoder(mel, wave, steps=size["steps"], channels=size["channels"], layers=size["layers"],
                                  progress=progress)
    meta = {"kind": "vocoder", "net": vocoder.config, "training": {**size, "segments": int(mel.shape[0])},
            "training_seconds": info["seconds"], "metrics": {"final_loss": info["final_loss"]},
            "loader": "diffusekit.zoo.recipes_audio:load_speech_vocoder"}
    return write_asset("speech_vocoder", vocoder.state_dict(), meta, assets_dir)


def load_speech_vocoder(state: dict, meta: dict):
    """Rebuild ``speech_vocoder`` (a ``VocosVocoder`` in eval mode)."""
    from ..domains.audio.vocoder import VocosVocoder

    vocoder = VocosVocoder(**meta["net"])
    vocoder.load_state_dict(state)
    return vocoder.eval()


def build_events_auffusion(budget: dict, assets_dir: Path, progress: bool) -> dict:
    """Train Auffusion's text-conditioned mel UNet on pitched event clips (the bench's data and recipe), measure
    it with CFG w = 3 on the bench's requests, and write ``events_auffusion``."""
    from ..bench.auffusion import measure, requests
    from ..domains.audio.text2audio import pitched_caption, pitched_clips
    from ..methods.auffusion import MelKindClassifier, generate_audio, train_auffusion
    from . import write_asset

    size = AUFFUSION_BUDGETS[budget["kind"]]
    images, captions, events = pitched_clips(size["train_clips"], seed=0)
    denoiser, info = train_auffusion(images, captions, steps=size["steps"], batch_size=16, seed=0, progress=progress)
    classifier = MelKindClassifier().fit(images, [e.kind for e in events])
    reqs = requests(1)
    gen_images, waves = generate_audio(denoiser, [pitched_caption(k, f) for k, f in reqs], guidance=3.0,
                                       steps=size["eval_steps"], seed=0)
    metrics = {f"w=3, {size['eval_steps']} DDIM steps": measure(waves, gen_images, reqs, classifier)}
    state = {**{f"net.{k}": v for k, v in denoiser.net.state_dict().items()},
             **{f"text_encoder.{k}": v for k, v in denoiser.text_encoder.state_dict().items()}}
    meta = {"kind": "text_to_audio", "net": {"context_dim": denoiser.text_encoder.width, "base_channels": 16,
                                             "channel_mult": [1, 2, 2]},
            "schedule": denoiser.schedule.config(), "prediction": denoiser.prediction,
            "scale_input": denoiser.scale_input, "sigma_data": denoiser.sigma_data,
            "tokenizer": denoiser.tokenizer.config(), "text_encoder": dict(denoiser.text_encoder.config),
            "caption_words": sorted({w for c in captions for w in c.split()}),
            "caption_examples": sorted(set(captions)),
            "training": {**size, "batch_size": 16, "caption_dropout": 0.1, "seed": 0},
            "training_seconds": info["seconds"], "metrics": metrics,
            "loader": "diffusekit.zoo.recipes_audio:load_events_auffusion"}
    return write_asset("events_auffusion", state, meta, assets_dir)


def load_events_auffusion(state: dict, meta: dict):
    """Rebuild ``events_auffusion`` as a ``TextConditionedDenoiser`` (MelUNet, frozen text encoder, tokenizer)."""
    from ..core import schedule_from_config
    from ..methods.auffusion import auffusion_unet
    from ..methods.text_conditioning import TextConditionedDenoiser
    from ..nets.text import CaptionTokenizer, TextEncoder

    cfg = meta["net"]
    net = auffusion_unet(cfg["context_dim"], cfg["base_channels"], tuple(cfg["channel_mult"]))
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    encoder = TextEncoder(**{k: v for k, v in meta["text_encoder"].items() if k != "name"})
    encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")})
    return TextConditionedDenoiser(net.eval(), schedule_from_config(meta["schedule"]), meta["prediction"],
                                   tokenizer=CaptionTokenizer(**meta["tokenizer"]), text_encoder=encoder,
                                   scale_input=meta["scale_input"], sigma_data=meta["sigma_data"])
