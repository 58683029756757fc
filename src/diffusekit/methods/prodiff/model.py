"""ProDiff's acoustic model at CPU scale (Huang et al. 2022, arXiv 2207.06389, Sec. 3 and Fig. 2): a FastSpeech-style
phoneme encoder with a duration predictor and length regulator (Ren et al. 2019, arXiv 1905.09263 / FastSpeech 2,
arXiv 2006.04558) conditioning a WaveNet-like non-causal denoiser over mel frames (DiffWave / DiffSpeech, Kong et
al. 2020, arXiv 2009.09761; Liu et al. 2021, arXiv 2105.02446) that predicts the clean mel x0 directly.

Shapes: phonemes (B, P) long (0 = pad), style (B, 3) long (voice, rate, pitch), durations (B, P) frames,
mel / x (B, n_mels, F), condition (B, hidden, F), mask (B, 1, F) (1 on real frames).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...domains.audio.tts import frame_phoneme_index
from ...nets.embedding import timestep_embedding

__all__ = ["ProDiffTTS", "PhonemeEncoder", "DurationPredictor", "WaveNetDenoiser", "regulated_condition"]


class PhonemeEncoder(nn.Module):
    """Phoneme embedding + sinusoidal positions + ``layers`` pre-norm transformer blocks (FastSpeech's FFT blocks
    with a linear feed-forward), plus the sum of the voice, rate and pitch embeddings (the "speaker"):
    (B, P) ids, (B, 3) style -> (B, P, hidden)."""

    def __init__(self, num_phonemes: int, num_styles, hidden: int = 64, layers: int = 2, heads: int = 2):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(num_phonemes, hidden, padding_idx=0)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0,
                                                               batch_first=True, norm_first=True)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.style = nn.ModuleList(nn.Embedding(n, hidden) for n in num_styles)

    def forward(self, phonemes: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        pad = phonemes.eq(0)
        pos = timestep_embedding(torch.arange(phonemes.shape[1], device=phonemes.device, dtype=torch.float32),
                                 self.hidden)
        h = self.embed(phonemes) * math.sqrt(self.hidden) + pos[None]
        for block in self.blocks:
            h = block(h, src_key_padding_mask=pad)
        h = self.norm(h) + sum(emb(style[:, k]) for k, emb in enumerate(self.style))[:, None, :]
        return h.masked_fill(pad[..., None], 0.0)


class DurationPredictor(nn.Module):
    """FastSpeech's duration predictor: two (conv 3, ReLU, LayerNorm) layers and a linear head, predicting
    log(1 + d) per phoneme (trained with MSE on log durations, FastSpeech 2 Sec. 2.3): (B, P, hidden) -> (B, P)."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(hidden, hidden, 3, padding=1) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(2))
        self.head = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            h = norm(torch.relu(conv(h.transpose(1, 2))).transpose(1, 2))
        return self.head(h).squeeze(-1)


class WaveNetDenoiser(nn.Module):
    """Non-causal WaveNet over mel frames (DiffSpeech / ProDiff's denoiser): per layer i with dilation
    2^(i mod cycle),

        y = DilConv(h + W_t e(t)) + W_c c,   g = tanh(y_1) * sigmoid(y_2),   (r, s) = W_o g,
        h <- (h + r) / sqrt(2),   skip += s,

    output W_2 relu(W_1 relu(skip / sqrt(L))) with W_2 zero-initialised; e(t) a sinusoidal embedding + MLP of the
    network time. Padded frames are zeroed after every layer. x (B, n_mels, F) -> x0_hat (B, n_mels, F).
    """

    def __init__(self, n_mels: int = 64, cond_channels: int = 64, channels: int = 64, layers: int = 8,
                 dilation_cycle: int = 4):
        super().__init__()
        self.channels = channels
        self.input = nn.Conv1d(n_mels, channels, 1)
        self.time_mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, channels))
        self.time_proj = nn.ModuleList(nn.Linear(channels, channels) for _ in range(layers))
        self.dilated = nn.ModuleList(nn.Conv1d(channels, 2 * channels, 3, padding=2 ** (i % dilation_cycle),
                                               dilation=2 ** (i % dilation_cycle)) for i in range(layers))
        self.cond_proj = nn.ModuleList(nn.Conv1d(cond_channels, 2 * channels, 1) for _ in range(layers))
        self.out_proj = nn.ModuleList(nn.Conv1d(channels, 2 * channels, 1) for _ in range(layers))
        self.skip_out = nn.Conv1d(channels, channels, 1)
        self.output = nn.Conv1d(channels, n_mels, 1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.time_mlp(timestep_embedding(t.reshape(-1).expand(x.shape[0]), self.channels).to(x.dtype))
        h = torch.relu(self.input(x)) * mask
        skip = torch.zeros_like(h)
        for tp, dil, cp, op in zip(self.time_proj, self.dilated, self.cond_proj, self.out_proj):
            y = dil(h + tp(e)[:, :, None]) + cp(condition)
            a, b = y.chunk(2, dim=1)
            r, s = op(torch.tanh(a) * torch.sigmoid(b)).chunk(2, dim=1)
            h = (h + r) / math.sqrt(2.0) * mask
            skip = skip + s
        skip = torch.relu(self.skip_out(torch.relu(skip / math.sqrt(len(self.dilated)))))
        return self.output(skip) * mask + x * (1 - mask)


def regulated_condition(h: torch.Tensor, durations: torch.Tensor, frame_ids: torch.Tensor):
    """Length-regulated condition at the given frames: h (B, P, C), durations (B, P), frame_ids (B, W) long (frame
    numbers, any >= 0) -> (condition (B, C, W), mask (B, 1, W)), condition[b, :, w] = h[b, i] for the phoneme i
    containing frame frame_ids[b, w] (FastSpeech's LR), zero and mask 0 past the sequence's end."""
    num_frames = int(frame_ids.max()) + 1
    index = frame_phoneme_index(durations, num_frames).gather(1, frame_ids)  # (B, W), -1 past the end
    valid = index.ge(0)
    cond = h.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, h.shape[-1]))  # (B, W, C)
    cond = cond * valid[..., None].to(h.dtype)
    return cond.transpose(1, 2), valid[:, None, :].to(h.dtype)


class ProDiffTTS(nn.Module):
    """Encoder + duration predictor + x0-predicting WaveNet denoiser. ``forward(x, t, condition=, mask=)`` is the
    denoiser, so ``NetworkDenoiser(model, schedule, "x0")`` samples with any core sampler; ``encode`` and
    ``condition`` give the conditioning from phonemes, style and (ground-truth or predicted) durations."""

    def __init__(self, num_phonemes: int, num_styles=(6, 3, 3), *, n_mels: int = 64, hidden: int = 64,
                 encoder_layers: int = 2, heads: int = 2, channels: int = 64, layers: int = 8,
                 dilation_cycle: int = 4):
        super().__init__()
        self.config = {"num_phonemes": num_phonemes, "num_styles": list(num_styles), "n_mels": n_mels,
                       "hidden": hidden, "encoder_layers": encoder_layers, "heads": heads, "channels": channels,
                       "layers": layers, "dilation_cycle": dilation_cycle}
        self.encoder = PhonemeEncoder(num_phonemes, num_styles, hidden, encoder_layers, heads)
        self.duration_predictor = DurationPredictor(hidden)
        self.denoiser = WaveNetDenoiser(n_mels, hidden, channels, layers, dilation_cycle)

    def encode(self, phonemes: torch.Tensor, style: torch.Tensor):
        """(h (B, P, hidden), predicted log(1 + d) (B, P))."""
        h = self.encoder(phonemes, style)
        return h, self.duration_predictor(h)

    def predicted_durations(self, log_durations: torch.Tensor, phonemes: torch.Tensor) -> torch.Tensor:
        """Frames per phoneme from the predictor: round(exp(log(1 + d)) - 1), >= 0, 0 on pads."""
        d = torch.clamp(torch.round(torch.expm1(log_durations)), min=0).long()
        return d * phonemes.ne(0).long()

    def condition(self, phonemes, style, durations, frame_ids=None):
        """(condition (B, hidden, W), mask (B, 1, W), predicted log durations (B, P)) at ``frame_ids`` (B, W)
        (default: all frames up to the longest sequence)."""
        h, log_d = self.encode(phonemes, style)
        if frame_ids is None:
            total = int(durations.sum(1).max())
            frame_ids = torch.arange(total, device=phonemes.device).expand(phonemes.shape[0], -1)
        cond, mask = regulated_condition(h, durations, frame_ids)
        return cond, mask, log_d

    def forward(self, x: torch.Tensor, t: torch.Tensor, *, condition: torch.Tensor, mask: torch.Tensor):
        return self.denoiser(x, t, condition, mask)
