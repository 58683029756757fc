"""Mel -> waveform vocoding: Griffin-Lim, and a small Vocos-style vocoder we train ourselves (no pretrained weights).

Vocos (Siuzdak 2023, "Vocos: Closing the gap between time-domain and Fourier-based neural vocoders", arXiv
2306.00814) keeps the whole network at the mel frame rate and predicts, per frame, the complex STFT of the output;
an inverse STFT (overlap-add) produces the samples. Ours:

    h = ConvNeXt^L(Conv1d(mel)),   log|S_hat| = log max(M^+ exp(m), 1e-5) + W_m h,   phi_hat = atan2(W_b h, W_a h),
    x = iSTFT(|S_hat| e^{i phi_hat})    (optionally after K Griffin-Lim iterations started from phi_hat),

ConvNeXt blocks (Liu et al. 2022, arXiv 2201.03545): depthwise conv k7 -> LayerNorm -> Linear C -> 3C -> GELU ->
Linear 3C -> C, layer scale, residual. The magnitude is a learned correction (zero-initialised) of the mel
pseudo-inverse M^+ (m the log-mel), so the untrained vocoder starts where Griffin-Lim's input is; the phase is
APNet's parallel estimate (Ai & Ling 2023, arXiv 2305.07952, Sec. 2.2). The STFT is the mel's own (n_fft 1024,
Hann window 640, hop 160, centred), so F mel frames give (F - 1) * 160 samples, frame k centred on sample 160 k.

Training, without the papers' GAN discriminators (``VocoderLoss``): spectral convergence + log-magnitude L1
against the true STFT (Parallel WaveGAN's pair, Yamamoto et al. 2020, arXiv 1910.11480, eq. 2-3, here on the
predicted spectrum) and APNet's anti-wrapped phase losses (eq. 7-10); optionally (``wave_weight``) the
multi-resolution STFT loss and HiFi-GAN's mel L1 (Kong et al. 2020, arXiv 2010.05646, eq. 4) on the iSTFT output.
A first version trained on the output wave only (Vocos's losses minus the GAN) and a second one predicting the
magnitude from scratch with a log-MSE both stayed far behind Griffin-Lim after 500-1500 CPU steps (spectral
convergence 0.7-0.8 against 0.35); see ``bench vocoder`` for the measured figures of this one.

Shipping criterion (stated before measuring, ``bench vocoder``): the trained vocoder replaces Griffin-Lim only if,
on held-out speech, it beats 64-iteration Griffin-Lim on ALL of log-spectral distance (by >= 1 dB), spectral
convergence (by >= 10 % relative) and the pYIN f0 error on frames voiced in both (by >= 10 % relative).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from .features import LOG_MAX, LOG_MIN, MelConfig, _mel_basis, griffin_lim

__all__ = ["VOCODERS", "ConvNeXtBlock", "VocosVocoder", "griffin_lim_refine", "multi_resolution_stft_loss",
           "anti_wrapping", "phase_losses", "VocoderLoss", "vocoder_segments", "train_vocoder", "vocode",
           "GriffinLimVocoder", "SHIP_CRITERION", "meets_ship_criterion"]

VOCODERS = ("griffin-lim",)  # shipped; a trained one is loaded from its manifest path (cli_tts)
STFT_RESOLUTIONS = ((256, 64, 256), (512, 128, 512), (1024, 256, 1024))
SHIP_CRITERION = {"lsd_margin_db": 1.0, "sc_relative": 0.9, "f0_relative": 0.9, "baseline": "griffin-lim@64"}


class ConvNeXtBlock(nn.Module):
    """x + gamma * Linear(GELU(Linear(LN(DWConv7(x))))) over (B, C, F) (Liu et al. 2022, arXiv 2201.03545;
    Vocos's backbone block, layer scale gamma initialised to ``scale``)."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pw1 = nn.Linear(channels, 3 * channels)
        self.pw2 = nn.Linear(3 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.dwconv(x).transpose(1, 2))
        h = self.pw2(torch.nn.functional.gelu(self.pw1(h))) * self.gamma
        return x + h.transpose(1, 2)


class VocosVocoder(nn.Module):
    """Vocos-style vocoder (see the module docstring): mel image (B, n_mels, F) in [-1, 1] (``features.mel_image``)
    -> wave (B, (F - 1) * hop). The log-magnitude head predicts a correction to the mel pseudo-inverse,

        log |S_hat| = log max(M^+ exp(m), 1e-5) + Delta_theta(m),

    (m the log-mel, M the mel filterbank; Delta's layer starts at zero, so the untrained vocoder starts from the
    magnitude Griffin-Lim would invert); the phase head is APNet's. ``config`` holds the constructor arguments (the
    zoo manifest's "net")."""

    def __init__(self, n_mels: int = 64, channels: int = 96, layers: int = 4, refine_iters: int = 32):
        super().__init__()
        mel_config = MelConfig(n_mels=n_mels)
        self.config = {"n_mels": n_mels, "channels": channels, "layers": layers, "refine_iters": refine_iters}
        self.n_fft, self.hop, self.win = mel_config.n_fft, mel_config.hop_length, mel_config.win_length
        bins = self.n_fft // 2 + 1
        self.embed = nn.Conv1d(n_mels, channels, 7, padding=3)
        self.embed_norm = nn.LayerNorm(channels)
        self.blocks = nn.ModuleList(ConvNeXtBlock(channels, 1.0 / layers) for _ in range(layers))
        self.final_norm = nn.LayerNorm(channels)
        self.magnitude_head = nn.Linear(channels, bins)
        self.phase_head = nn.Linear(channels, 2 * bins)
        nn.init.zeros_(self.magnitude_head.weight)
        nn.init.zeros_(self.magnitude_head.bias)
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        basis = torch.from_numpy(np.ascontiguousarray(_mel_basis(mel_config))).double()
        self.register_buffer("mel_pinv", torch.linalg.pinv(basis).float(), persistent=False)

    def log_magnitude_and_phase(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log |S| (B, K, F), phase (B, K, F) in (-pi, pi]), K = n_fft / 2 + 1; the phase is APNet's parallel
        estimate atan2(b, a) of two linear outputs (Ai & Ling 2023, arXiv 2305.07952, Sec. 2.2)."""
        log_mel = (mel.clamp(-1, 1) + 1) * 0.5 * (LOG_MAX - LOG_MIN) + LOG_MIN  # features.unscale_log_mel
        base = torch.log(torch.clamp(self.mel_pinv @ torch.exp(log_mel), min=1e-5))
        h = self.embed_norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        h = self.final_norm(h.transpose(1, 2))
        a, b = self.phase_head(h).transpose(1, 2).chunk(2, dim=1)
        log_magnitude = base + self.magnitude_head(h).transpose(1, 2)
        return log_magnitude.clamp(max=math.log(100.0)), torch.atan2(b, a + 1e-7)

    def spectrum(self, mel: torch.Tensor) -> torch.Tensor:
        """The predicted complex STFT (B, n_fft / 2 + 1, F): exp(m) (cos p + i sin p), |S| clamped at 100."""
        m, p = self.log_magnitude_and_phase(mel)
        return torch.polar(torch.exp(m), p)

    def forward(self, mel: torch.Tensor, refine_iters: int | None = None) -> torch.Tensor:
        """Wave (B, (F - 1) hop): iSTFT of the predicted spectrum, then ``refine_iters`` (default: the config's)
        fast Griffin-Lim iterations on the predicted magnitude started from the predicted phase
        (:func:`griffin_lim_refine`; 0 = the network's own phase, Vocos / APNet)."""
        if mel.ndim != 3 or mel.shape[1] != self.config["n_mels"]:
            raise ValueError(f"mel must be (B, {self.config['n_mels']}, F); got {tuple(mel.shape)}")
        iters = self.config["refine_iters"] if refine_iters is None else int(refine_iters)
        log_magnitude, phase = self.log_magnitude_and_phase(mel)
        if iters > 0:
            phase = griffin_lim_refine(self, torch.exp(log_magnitude), phase, iters)
        return self.synthesize(torch.polar(torch.exp(log_magnitude), phase))

    def synthesize(self, spectrum: torch.Tensor) -> torch.Tensor:
        """iSTFT (overlap-add, Hann window, the mel's n_fft / hop / win) of (B, K, F) -> (B, (F - 1) hop)."""
        return torch.istft(spectrum, self.n_fft, self.hop, self.win, self.window, center=True,
                           length=(spectrum.shape[-1] - 1) * self.hop)

    def analyse(self, wave: torch.Tensor) -> torch.Tensor:
        """The STFT the head predicts, of a true wave (B, (F - 1) hop) -> (B, K, F) complex."""
        return torch.stft(wave, self.n_fft, self.hop, self.win, self.window, center=True, return_complex=True)


def griffin_lim_refine(net: VocosVocoder, magnitude: torch.Tensor, phase: torch.Tensor, n_iter: int,
                       momentum: float = 0.99) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013; Griffin & Lim 1984) at the head's STFT resolution, started from
    ``phase`` instead of a random one: c_k = STFT(iSTFT(|S| e^{i phi_k})), t_k = c_k - m / (1 + m) c_{k-1},
    phi_{k+1} = angle(t_k). magnitude, phase (B, K, F) -> refined phase (B, K, F)."""
    angles = torch.polar(torch.ones_like(magnitude), phase)
    previous = torch.zeros_like(angles)
    for _ in range(int(n_iter)):
        rebuilt = net.analyse(net.synthesize(magnitude * angles))
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return angles.angle()


def _stft_magnitude(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    window = torch.hann_window(win, device=x.device, dtype=x.dtype)
    return torch.stft(x, n_fft, hop, win, window, center=True, return_complex=True).abs().clamp(min=1e-7)


def multi_resolution_stft_loss(x_hat: torch.Tensor, x: torch.Tensor,
                               resolutions=STFT_RESOLUTIONS) -> torch.Tensor:
    """Parallel WaveGAN's multi-resolution STFT loss (Yamamoto et al. 2020, arXiv 1910.11480, eq. 1-4) per example:
    mean over resolutions of L_sc + L_mag (module docstring). x_hat, x: (B, T) -> (B,)."""
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for n_fft, hop, win in resolutions:
        a, b = _stft_magnitude(x, n_fft, hop, win), _stft_magnitude(x_hat, n_fft, hop, win)
        sc = (a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1).clamp(min=1e-7)
        mag = (a.log() - b.log()).abs().flatten(1).mean(1)
        total = total + sc + mag
    return total / len(resolutions)


def anti_wrapping(x: torch.Tensor) -> torch.Tensor:
    """APNet's anti-wrapping function f_AW(x) = |x - 2 pi round(x / 2 pi)| (Ai & Ling 2023, arXiv 2305.07952,
    eq. 7): the distance between two phases modulo 2 pi."""
    return (x - 2 * math.pi * torch.round(x / (2 * math.pi))).abs()


def phase_losses(phase_hat: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """APNet's phase losses per example (arXiv 2305.07952, eq. 8-10), phases (B, K, F): instantaneous phase
    mean f_AW(p_hat - p), group delay mean f_AW(Delta_K p_hat - Delta_K p) (differences along frequency) and
    instantaneous angular frequency mean f_AW(Delta_F p_hat - Delta_F p) (along time), summed -> (B,)."""
    ip = anti_wrapping(phase_hat - phase).flatten(1).mean(1)
    gd = anti_wrapping(torch.diff(phase_hat, dim=1) - torch.diff(phase, dim=1)).flatten(1).mean(1)
    iaf = anti_wrapping(torch.diff(phase_hat, dim=2) - torch.diff(phase, dim=2)).flatten(1).mean(1)
    return ip + gd + iaf


class VocoderLoss:
    """``Trainer`` loss of :class:`VocosVocoder`, batch = (mel (B, M, W), wave (B, (W - 1) hop)), per example:

        L = || |S_hat| - |S| ||_F / || |S| ||_F + mean |log|S_hat| - log|S|| + w_p L_phase(phi_hat, angle S)
            + w_x (L_MR-STFT(x_hat, x) + mean |mel(x_hat) - mel(x)|),

    S the true STFT at the head's resolution (APNet's direct amplitude and phase targets, Ai & Ling 2023, arXiv
    2305.07952, which make a frame-level vocoder trainable without a discriminator), L_phase :func:`phase_losses`,
    x_hat = iSTFT(S_hat) the output wave, L_MR-STFT Parallel WaveGAN's loss and the last term HiFi-GAN's mel L1 on
    our 64-mel log spectrogram (floor 1e-5). ``train_vocoder`` uses w_p = 1, w_x = 0."""

    def __init__(self, config: MelConfig | None = None, *, phase_weight: float = 1.0, wave_weight: float = 0.0):
        self.config = config = config or MelConfig()
        self.phase_weight, self.wave_weight = float(phase_weight), float(wave_weight)
        self.basis = torch.from_numpy(np.ascontiguousarray(_mel_basis(config)))

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        mag = _stft_magnitude(x, c.n_fft, c.hop_length, c.win_length)
        return torch.log(torch.clamp(self.basis.to(x.dtype) @ mag, min=1e-5))

    def __call__(self, net: VocosVocoder, batch, generator=None) -> torch.Tensor:
        mel, wave = batch
        log_mag_hat, phase_hat = net.log_magnitude_and_phase(mel)
        target = net.analyse(wave)
        magnitude, magnitude_hat = target.abs().clamp(min=1e-5), torch.exp(log_mag_hat)
        loss = ((magnitude_hat - magnitude).flatten(1).norm(dim=1) / magnitude.flatten(1).norm(dim=1).clamp(min=1e-5)
                + (log_mag_hat - magnitude.log()).abs().flatten(1).mean(1))
        if self.phase_weight:
            loss = loss + self.phase_weight * phase_losses(phase_hat, target.angle())
        if self.wave_weight:
            x_hat = net.synthesize(torch.polar(torch.exp(log_mag_hat), phase_hat))
            wave_terms = multi_resolution_stft_loss(x_hat, wave)
            wave_terms = wave_terms + (self.log_mel(x_hat) - self.log_mel(wave)).abs().flatten(1).mean(1)
            loss = loss + self.wave_weight * wave_terms
        return loss


def vocoder_segments(waves, *, window: int = 32, stride: int = 16, config: MelConfig | None = None):
    """Aligned training pairs cut from float waves: (mel (N, n_mels, window) in [-1, 1], wave (N, (window - 1) hop)),
    mel frames k..k + window - 1 of ``features.mel_image(wave)`` with samples [hop k, hop (k + window - 1)), for
    k = 0, stride, 2 stride, ... (waves shorter than one window are zero-padded to it)."""
    from .features import mel_image

    config = config or MelConfig()
    hop = config.hop_length
    mels, segs = [], []
    need = (window - 1) * hop
    for w in waves:
        w = np.asarray(w, dtype=np.float32)
        if w.size < need:
            w = np.pad(w, (0, need - w.size))
        image = mel_image(w, config)
        for k in range(0, image.shape[1] - window + 1, stride):
            if hop * k + need > w.size:
                break
            mels.append(image[:, k:k + window])
            segs.append(w[hop * k: hop * k + need])
    return torch.from_numpy(np.stack(mels)), torch.from_numpy(np.stack(segs))


def train_vocoder(mel: torch.Tensor, wave: torch.Tensor, *, steps: int, batch_size: int = 16, lr: float = 2e-3,
                  seed: int = 0, channels: int = 96, layers: int = 4, phase_weight: float = 1.0,
                  wave_weight: float = 0.0, refine_iters: int = 32, progress: bool = False):
    """Train a fresh :class:`VocosVocoder` on aligned pairs (``vocoder_segments``) with :class:`VocoderLoss` for
    ``steps`` AdamW steps (the library ``Trainer``: warm-up, grad clip 1, no EMA). Returns (vocoder in eval mode,
    {"steps", "seconds", "final_loss"})."""
    from ...training import TrainConfig, Trainer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VocosVocoder(mel.shape[1], channels, layers, refine_iters=refine_iters)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(50, steps), ema_decay=None,
                      seed=seed, progress=progress, log_every=max(1, steps // 20))
    t0 = time.perf_counter()
    loss = VocoderLoss(phase_weight=phase_weight, wave_weight=wave_weight)
    history = Trainer(net, loss, (mel.float(), wave.float()), cfg).fit()
    losses = history.get("loss", [])
    tail = losses[-5:] if losses else [float("nan")]
    return net.eval(), {"steps": int(steps), "seconds": time.perf_counter() - t0,
                        "final_loss": float(np.mean(tail))}


@torch.no_grad()
def vocode(vocoder, mel_image, *, length: int | None = None) -> np.ndarray:
    """One mel image (n_mels, F) in [-1, 1] -> float32 wave in [-1, 1] of (F - 1) * hop samples (or ``length``,
    cut or zero-padded), with a :class:`VocosVocoder` or a :class:`GriffinLimVocoder`."""
    m = torch.as_tensor(np.asarray(mel_image, dtype=np.float32))
    if isinstance(vocoder, GriffinLimVocoder):
        wave = vocoder(m.numpy())
    else:
        wave = vocoder(m[None])[0].numpy()
    if length is not None:
        wave = wave[:length] if wave.size >= length else np.pad(wave, (0, length - wave.size))
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


class GriffinLimVocoder:
    """``features.griffin_lim`` as a vocoder object: NNLS mel pseudo-inverse + ``n_iter`` Griffin-Lim iterations
    (Griffin & Lim 1984) on a mel image in [-1, 1]."""

    def __init__(self, n_iter: int = 32, seed: int = 0, config: MelConfig | None = None):
        self.n_iter, self.seed, self.config = int(n_iter), int(seed), config or MelConfig()

    def __call__(self, mel_image: np.ndarray, length: int | None = None) -> np.ndarray:
        frames = np.asarray(mel_image).shape[-1]
        return griffin_lim(np.asarray(mel_image), self.config, n_iter=self.n_iter, scaled=True,
                           length=length or (frames - 1) * self.config.hop_length, seed=self.seed)


def meets_ship_criterion(vocoder: dict, baseline: dict, criterion: dict = SHIP_CRITERION) -> bool:
    """True when the trained vocoder's held-out means beat the baseline's by the stated margins (module docstring):
    lsd <= lsd_base - margin, sc <= rel * sc_base, f0 cents <= rel * f0_base (all finite)."""
    values = [vocoder["lsd"], vocoder["sc"], vocoder["f0_cents"], baseline["lsd"], baseline["sc"],
              baseline["f0_cents"]]
    if not all(math.isfinite(v) for v in values):
        return False
    return (vocoder["lsd"] <= baseline["lsd"] - criterion["lsd_margin_db"]
            and vocoder["sc"] <= criterion["sc_relative"] * baseline["sc"]
            and vocoder["f0_cents"] <= criterion["f0_relative"] * baseline["f0_cents"])
