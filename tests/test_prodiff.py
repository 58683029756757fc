"""ProDiff (Huang et al. 2022, arXiv 2207.06389): length regulation, the x0 parameterisation against the core's
conversions, the distillation target against two core DDIM steps, and the direction of distillation (bench quick)."""

import math

import numpy as np
import pytest
import torch

from diffusekit.core import NetworkDenoiser, VPLinear
from diffusekit.core.predictions import convert, prediction_from_x0_eps, x0_from_prediction
from diffusekit.domains.audio.features import mel_image
from diffusekit.domains.audio.speech import load_speech_corpus
from diffusekit.domains.audio.tts import (PhonemeVocabulary, frame_durations, frame_phoneme_index, length_regulate,
                                          split_by_text)
from diffusekit.methods.distill.progressive import ddim_step, progressive_target
from diffusekit.methods.prodiff import (ProDiffDistillationLoss, ProDiffTeacherLoss, ProDiffTTS, crop_frames,
                                        masked_l1, mel_l1, prodiff_denoiser, regulated_condition, synthesize)
from diffusekit.samplers import sample_ddim

SCHEDULE = VPLinear(0.1, 40.0)
TS4 = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)


@pytest.fixture(scope="module")
def corpus():
    return load_speech_corpus()


def tiny_model(seed=0, num_phonemes=12):
    torch.manual_seed(seed)
    model = ProDiffTTS(num_phonemes, (3, 2, 2), n_mels=8, hidden=16, encoder_layers=1, channels=16, layers=3).eval()
    torch.nn.init.normal_(model.denoiser.output.weight, std=0.1)  # a non-trivial x0 head (it starts at zero)
    return model


def tiny_batch(seed=0, b=3, p=5, num_phonemes=12):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([p, p - 2, p - 1])[:b]
    phonemes = torch.randint(1, num_phonemes, (b, p), generator=g)
    durations = torch.randint(0, 5, (b, p), generator=g)
    for i, n in enumerate(lengths):
        phonemes[i, n:] = 0
        durations[i, n:] = 0
        durations[i, 0] += 1
    style = torch.stack([torch.randint(0, k, (b,), generator=g) for k in (3, 2, 2)], 1)
    return phonemes, durations, style


def test_frame_durations_sum_to_mel_frames(corpus):
    for u in corpus.utterances[::40]:
        d = frame_durations(u.boundaries, len(u.audio))
        assert d.min() >= 0 and len(d) == len(u.phonemes)
        assert int(d.sum()) == mel_image(u.wave).shape[1] == 1 + len(u.audio) // 160
        # each phoneme gets about samples / 160 frames
        assert np.all(np.abs(d - u.durations / 160) <= 1.0 + 1e-9)


def test_length_regulation_expands_exactly_by_durations():
    h = torch.randn(4, 3)
    d = torch.tensor([2, 0, 3, 1])
    out = length_regulate(h, d)
    assert out.shape == (6, 3)
    torch.testing.assert_close(out, torch.cat([h[0:1]] * 2 + [h[2:3]] * 3 + [h[3:4]]))
    phonemes, durations, style = tiny_batch()
    idx = frame_phoneme_index(durations, 25)
    hb = torch.randn(*phonemes.shape, 7)
    for b in range(len(phonemes)):
        total = int(durations[b].sum())
        assert bool((idx[b, total:] == -1).all()) and bool((idx[b, :total] >= 0).all())
        torch.testing.assert_close(hb[b][idx[b, :total]], length_regulate(hb[b], durations[b]))
    # the batched regulator at shifted windows equals the per-sequence one
    frame_ids = torch.arange(4, 14).expand(len(phonemes), -1)
    cond, mask = regulated_condition(hb, durations, frame_ids)
    for b in range(len(phonemes)):
        full = length_regulate(hb[b], durations[b])
        n = int(mask[b, 0].sum())
        assert n == max(0, min(10, len(full) - 4))
        torch.testing.assert_close(cond[b, :, :n].T, full[4:4 + n])
        assert float(cond[b, :, n:].abs().sum()) == 0.0
    with pytest.raises(ValueError):
        length_regulate(h, d[:3])


def test_vocabulary_and_split(corpus):
    vocab = PhonemeVocabulary(corpus.phoneme_inventory())
    assert len(vocab) == len(corpus.phoneme_inventory()) + 1 and vocab.encode(["_"])[0] > 0
    with pytest.raises(ValueError, match="unknown phoneme"):
        vocab.encode(["not-a-phoneme"])
    train, test = split_by_text(corpus.utterances, 0.1, seed=0)
    assert sorted(train + test) == list(range(len(corpus)))
    assert not {corpus.utterances[i].text for i in train} & {corpus.utterances[i].text for i in test}


def test_crop_frames_stays_inside_and_pads():
    mel = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    frames = torch.tensor([10, 4])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids, crop = crop_frames(mel, frames, 6, g)
        assert 0 <= int(ids[0, 0]) <= 4 and int(ids[1, 0]) == 0
        torch.testing.assert_close(crop[0], mel[0][:, ids[0]])
        torch.testing.assert_close(crop[1, :, :4], mel[1, :, :4])
        assert bool((crop[1, :, 4:] == -1).all())


def test_x0_parameterisation_matches_core_conversions():
    model = tiny_model()
    phonemes, durations, style = tiny_batch()
    cond, mask, _ = model.condition(phonemes, style, durations)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, cond.shape[-1], generator=g).double()  # float32 values: the network sees x exactly
    t = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    den = prodiff_denoiser(model, SCHEDULE)
    x0 = den(x, t, condition=cond, mask=mask)
    raw = model(x.float(), SCHEDULE.network_time(t).float(), condition=cond, mask=mask).double()
    torch.testing.assert_close(x0, raw)  # the network output IS x0_hat
    alpha, sigma = SCHEDULE.alpha(t)[:, None, None], SCHEDULE.sigma(t)[:, None, None]
    eps = den.eps(x, t, condition=cond, mask=mask)
    torch.testing.assert_close(eps, (x - alpha * x0) / sigma)
    torch.testing.assert_close(convert(raw, x, t, SCHEDULE, "x0", "eps"), eps)
    v = convert(raw, x, t, SCHEDULE, "x0", "v")
    torch.testing.assert_close(v, alpha * eps - sigma * x0)
    torch.testing.assert_close(x0_from_prediction(v, x, t, SCHEDULE, "v"), x0)
    torch.testing.assert_close(prediction_from_x0_eps(x0, eps, t, SCHEDULE, "v"), v)
    # the same network re-parameterised to predict eps (via the core's conversion) gives the same x0_hat
    eps_den = NetworkDenoiser(AsEps(model), SCHEDULE, "eps", scale_input=False)
    torch.testing.assert_close(eps_den(x, t, condition=cond, mask=mask), x0)


class AsEps(torch.nn.Module):
    """An x0 network's output converted to eps with ``core.predictions.convert`` (network time = 1000 t)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x_in, t_in, **cond):
        x0 = self.model(x_in, t_in, **cond)
        return convert(x0.double(), x_in.double(), t_in.double() / 1000.0, SCHEDULE, "x0", "eps")


def test_distillation_target_equals_two_core_ddim_steps():
    teacher = tiny_model(0)
    phonemes, durations, style = tiny_batch()
    cond, mask, _ = teacher.condition(phonemes, style, durations)
    den = prodiff_denoiser(teacher, SCHEDULE)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 8, cond.shape[-1], generator=g, dtype=torch.float64)
    for t, t_mid, t_next in [(1.0, 0.75, 0.5), (0.5, 0.25, 0.0)]:
        with torch.no_grad():
            target = progressive_target(den, z, t, t_mid, t_next, condition=cond, mask=mask)
            z_two = sample_ddim(den, z, torch.tensor([t, t_mid, t_next], dtype=torch.float64),
                                cond={"condition": cond, "mask": mask})
        # one DDIM step t -> t_next with x0_hat = x~ lands where two teacher steps land
        torch.testing.assert_close(ddim_step(z, target, torch.tensor(t), torch.tensor(t_next), SCHEDULE), z_two)
        if t_next == 0.0:  # to the data: x~ is the teacher's x0 at the midpoint
            torch.testing.assert_close(target, z_two)
    # the loss uses that target: rebuild it from the same random draws
    student = tiny_model(1)
    mel = torch.rand(3, 8, int(durations.sum(1).max())) * 2 - 1
    frames = durations.sum(1)
    loss_fn = ProDiffDistillationLoss(teacher, SCHEDULE, TS4, window=6)
    with torch.no_grad():
        loss = loss_fn(student, (mel, phonemes, durations, frames, style), torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        ids, x0 = crop_frames(mel, frames, 6, g)
        i = torch.randint(0, 2, (3,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        ts = TS4[2 * i]
        zt = SCHEDULE.add_noise(x0, ts, eps)
        c, m, _ = teacher.condition(phonemes, style, durations, ids)
        expected = []
        for b in range(3):
            grid = TS4[2 * int(i[b]):2 * int(i[b]) + 3]
            zb = sample_ddim(den, zt[b:b + 1], grid, cond={"condition": c[b:b + 1], "mask": m[b:b + 1]})
            ratio = SCHEDULE.sigma(grid[2]) / SCHEDULE.sigma(grid[0])
            xt = (zb - ratio * zt[b:b + 1]) / (SCHEDULE.alpha(grid[2]) - ratio * SCHEDULE.alpha(grid[0]))
            xs = prodiff_denoiser(student, SCHEDULE)(zt[b:b + 1], grid[0], condition=c[b:b + 1], mask=m[b:b + 1])
            expected.append(masked_l1(xs, xt, m[b:b + 1]))
    torch.testing.assert_close(loss, torch.cat(expected), rtol=1e-4, atol=1e-6)


def test_synthesis_shapes_and_nfe():
    model = tiny_model()
    phonemes, durations, style = tiny_batch()
    calls = []
    model.denoiser.register_forward_hook(lambda *a: calls.append(1))
    mel, frames = synthesize(model, SCHEDULE, TS4[::2], phonemes, style, durations=durations,
                             generator=torch.Generator().manual_seed(0))
    assert len(calls) == 2 and mel.shape == (3, 8, int(durations.sum(1).max()))
    torch.testing.assert_close(frames, durations.sum(1))
    assert float(mel.abs().max()) <= 1.0
    assert float(mel_l1(mel, mel, frames).abs().max()) == 0.0
    mel_txt, frames_txt = synthesize(model, SCHEDULE, TS4[::4], phonemes[:1], style[:1])  # predicted durations
    assert mel_txt.shape[-1] == int(frames_txt[0]) >= 1


def test_bench_prodiff_quick_distillation_direction(tmp_path):
    from diffusekit.bench import run_bench

    r = run_bench("prodiff", out=tmp_path, quick=True)
    assert (tmp_path / "prodiff.json").is_file() and (tmp_path / "prodiff.png").is_file()
    tab = r["table"]
    for name in ("teacher@4", "teacher@2", "teacher@1", "student@2", "student@1"):
        assert math.isfinite(tab[name]["mel_l1"]) and tab[name]["rtf"] > 0
    assert [tab[n]["nfe"] for n in ("teacher@4", "student@2", "student@1")] == [4, 2, 1]
    # the distilled students follow the 4-step teacher more closely than the teacher run with as few steps
    assert tab["student@2"]["l1_to_teacher4"] < tab["teacher@2"]["l1_to_teacher4"]
    assert tab["student@1"]["l1_to_teacher4"] < tab["teacher@1"]["l1_to_teacher4"]
    # the duration predictor learned the utterance lengths (text-only synthesis relies on it)
    assert 0.75 < r["durations"]["total_length_ratio"] < 1.25


def test_teacher_loss_rebuilt_from_its_draws():
    model = tiny_model(3)
    phonemes, durations, style = tiny_batch()
    frames = durations.sum(1)
    mel = torch.rand(3, 8, int(frames.max())) * 2 - 1
    batch = (mel, phonemes, durations, frames, style)
    for prediction in ("x0", "eps"):
        loss_fn = ProDiffTeacherLoss(SCHEDULE, TS4, window=6, prediction=prediction, duration_weight=0.5)
        with torch.no_grad():
            loss = loss_fn(model, batch, torch.Generator().manual_seed(9))
            g = torch.Generator().manual_seed(9)
            ids, x0 = crop_frames(mel, frames, 6, g)
            cond, mask, log_d = model.condition(phonemes, style, durations, ids)
            t = TS4[:-1][torch.randint(0, 4, (3,), generator=g)]  # the teacher's noisy grid points
            eps = torch.randn(x0.shape, generator=g)
            out = prodiff_denoiser(model, SCHEDULE, prediction).raw(SCHEDULE.add_noise(x0, t, eps), t,
                                                                   condition=cond, mask=mask)
            pm = phonemes.ne(0).float()
            dur = ((log_d - torch.log1p(durations.float())) ** 2 * pm).sum(1) / pm.sum(1)
        torch.testing.assert_close(loss, masked_l1(out, x0 if prediction == "x0" else eps, mask) + 0.5 * dur)
    with pytest.raises(ValueError, match="prediction"):
        ProDiffTeacherLoss(SCHEDULE, TS4, prediction="v")
    with pytest.raises(ValueError, match="time_sampling"):
        ProDiffTeacherLoss(SCHEDULE, TS4, time_sampling="uniform")
