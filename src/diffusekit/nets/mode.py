"""MoDE: a transformer denoiser whose feed-forward layers are a noise-routed mixture of denoising experts.

Reuss et al., "Efficient Diffusion Transformer Policies with Mixture of Expert Denoisers for Multitask
Learning" (MoDE, ICLR 2025, arXiv 2412.12953). Here only the architecture, trained as an image / sequence
denoiser (patch tokens like the DiT, ``dims`` 1 or 2). With the noise conditioning c = MLP(sinusoidal(t)) (+ E[class]),
every block is

    h <- h + Attn(RMSNorm(h) + c)
    h <- h + sum_{i in top-k(p(r))} p_i(r) * Expert_i(RMSNorm(h)),    p(r) = renormalised top-k of softmax(Router(r))

with E SwiGLU experts ``Expert_i(x) = W2_i (SiLU(W1_i x) * W3_i x)`` and a router MLP whose input r is the noise
embedding alone (``router_input="noise"``, the paper's choice) or c including the class
(``router_input="noise_and_class"``). Routing therefore depends on the noise level (and class) only, never on x:

* training adds the load-balancing loss  L_bal = E * sum_i mean_b(P_i) * f_i  (P = the full softmax, f_i = the
  fraction of top-k slots given to expert i; L_bal = 1 at uniform usage) and optionally the router z-loss
  mean_b(logsumexp(logits)^2) -- read them with ``net.aux_loss()`` after a forward;
* at inference ``net.precompute_experts(times)`` fixes the router decision for every sampling time and FUSES the
  k chosen experts into one SwiGLU MLP with concatenated weights ``W1 = [W1_a; W1_b]``, ``W3 = [W3_a; W3_b]``,
  ``W2 = [p_a W2_a, p_b W2_b]``, so one matmul replaces k experts; ``forward`` uses the fused MLP whenever the
  time (and class, if routed on) of every example has a cached entry and the net is in eval mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dit import check_token_geometry, positive_int, sincos_positions
from .embedding import TimeClassEmbedding, prepare_labels, prepare_time

__all__ = ["MoDE", "MoDEBlock", "SwiGLUExperts", "ROUTER_INPUTS"]

ROUTER_INPUTS = ("noise", "noise_and_class")


class SwiGLUExperts(nn.Module):
    """E SwiGLU experts stored as stacked weights: ``Expert_i(x) = W2_i (SiLU(W1_i x) * W3_i x)``.

    ``w_gate`` = W1 (E, H, D), ``w_up`` = W3 (E, H, D), ``w_down`` = W2 (E, D, H); no biases, so a
    probability-weighted sum of experts is exactly one SwiGLU MLP with concatenated weights (see ``fuse``).
    """

    def __init__(self, num_experts: int, dim: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Parameter(torch.randn(num_experts, hidden, dim) / math.sqrt(dim))
        self.w_up = nn.Parameter(torch.randn(num_experts, hidden, dim) / math.sqrt(dim))
        self.w_down = nn.Parameter(torch.randn(num_experts, dim, hidden) / math.sqrt(hidden) * 0.5)

    def expert(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Expert i on tokens x (..., D) -> (..., D)."""
        return F.linear(F.silu(F.linear(x, self.w_gate[i])) * F.linear(x, self.w_up[i]), self.w_down[i])

    def fuse(self, index: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fused SwiGLU weights for per-key expert choices ``index`` (M, k) with probabilities ``weight`` (M, k).

        Returns (W1 (M, kH, D), W3 (M, kH, D), W2 (M, D, kH)) with W2 = [p_1 W2_{i1}, ..., p_k W2_{ik}], so that
        W2 (SiLU(W1 x) * W3 x) = sum_j p_j Expert_{i_j}(x) exactly (up to float summation order).
        """
        m, k = index.shape
        hidden, dim = self.w_gate.shape[1:]
        gate = self.w_gate[index].reshape(m, k * hidden, dim)
        up = self.w_up[index].reshape(m, k * hidden, dim)
        down = (self.w_down[index] * weight[:, :, None, None].to(self.w_down.dtype))  # (M, k, D, H)
        down = down.permute(0, 2, 1, 3).reshape(m, dim, k * hidden)
        return gate, up, down


def _swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """SwiGLU with weights shared by the batch ((H, D), (H, D), (D, H)) or per example ((B, H, D), ...)."""
    if gate.ndim == 2:
        return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)
    hid = F.silu(torch.bmm(x, gate.transpose(1, 2))) * torch.bmm(x, up.transpose(1, 2))
    return torch.bmm(hid, down.transpose(1, 2))


class MoDEBlock(nn.Module):
    """One MoDE block (see the module docstring): attention with additive noise conditioning, then a top-k
    mixture of SwiGLU experts chosen by a router MLP on the noise conditioning only.

    ``forward(h, c, r, fused=None)``: h (B, N, D), c (B, D) added before attention, r (B, D) the router input;
    ``fused`` = (W1, W3, W2) from ``SwiGLUExperts.fuse`` gathered per example (or shared) replaces routing.
    After an unfused forward, ``self.last_routing`` holds (probs (B, E), top-k index (B, k), top-k weight (B, k),
    logits (B, E)).
    """

    def __init__(self, dim: int, num_heads: int, num_experts: int, top_k: int, expert_hidden: int):
        super().__init__()
        self.num_heads, self.num_experts, self.top_k = num_heads, num_experts, top_k
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6)
        self.router = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, num_experts))
        self.experts = SwiGLUExperts(num_experts, dim, expert_hidden)
        self.last_routing = None

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention softmax(Q K^T / sqrt(d)) V over all tokens, (B, N, D) -> (B, N, D)."""
        b, n, d = h.shape
        q, k, v = (z.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)
                   for z in self.qkv(h).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def route(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router decision for router inputs r (B, D): (softmax probs (B, E), top-k index (B, k), top-k weights
        renormalised to sum to 1 (B, k), logits (B, E))."""
        logits = self.router(r).float()
        probs = torch.softmax(logits, dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        return probs, top_i, top_p / top_p.sum(-1, keepdim=True), logits

    def mixture(self, x: torch.Tensor, top_i: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
        """sum_j w_j Expert_{i_j}(x) computing each expert only on the examples routed to it (sparse dispatch).

        x (B, N, D), top_i / top_w (B, k) -> (B, N, D)."""
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            w_e = (top_w * (top_i == e)).sum(-1)  # (B,)
            rows = torch.nonzero(w_e > 0).flatten()
            if rows.numel() == 0:
                continue
            if rows.numel() == x.shape[0]:
                out = out + w_e[:, None, None].to(x.dtype) * self.experts.expert(e, x)
            else:
                y = w_e[rows, None, None].to(x.dtype) * self.experts.expert(e, x[rows])
                out = out.index_add(0, rows, y)
        return out

    def forward(self, h: torch.Tensor, c: torch.Tensor, r: torch.Tensor, fused=None) -> torch.Tensor:
        h = h + self.attention(self.norm1(h) + c[:, None, :])
        x = self.norm2(h)
        if fused is not None:
            self.last_routing = None
            return h + _swiglu(x, *fused)
        probs, top_i, top_w, logits = self.route(r)
        self.last_routing = (probs, top_i, top_w, logits)
        return h + self.mixture(x, top_i, top_w)


class MoDE(nn.Module):
    """Mixture-of-denoising-experts transformer, ``forward(x, t, class_labels=None)`` like every net here.

    Args:
        in_channels / out_channels, image_size, patch_size, dims: as for the DiT (images (B, C, S, S) for dims 2,
            signals (B, C, L) for dims 1; N = (S / p) ** dims patch tokens with fixed sin-cos positions).
        hidden_size, depth, num_heads: transformer width D, blocks, heads.
        num_experts, top_k: E SwiGLU experts per block, k of them active per example (1 <= k <= E).
        expert_hidden: hidden width H of one expert (default D, so k = 2 active experts cost a 2D-wide MLP).
        num_classes: None or the class count (null row ``num_classes`` for classifier-free guidance).
        router_input: "noise" (router sees only the time embedding, as in the paper) or "noise_and_class".
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, patch_size: int = 2, hidden_size: int = 64,
                 depth: int = 4, num_heads: int = 4, num_experts: int = 4, top_k: int = 2,
                 expert_hidden: int | None = None, num_classes: int | None = None, dims: int = 2,
                 out_channels: int | None = None, router_input: str = "noise"):
        super().__init__()
        in_channels = positive_int("in_channels", in_channels)
        out_channels = in_channels if out_channels is None else positive_int("out_channels", out_channels)
        image_size, patch_size = positive_int("image_size", image_size), positive_int("patch_size", patch_size)
        hidden_size, depth = positive_int("hidden_size", hidden_size), positive_int("depth", depth)
        num_heads, num_experts = positive_int("num_heads", num_heads), positive_int("num_experts", num_experts)
        top_k = positive_int("top_k", top_k)
        expert_hidden = hidden_size if expert_hidden is None else positive_int("expert_hidden", expert_hidden)
        if top_k > num_experts:
            raise ValueError(f"top_k must be <= num_experts ({num_experts}), got {top_k}")
        check_token_geometry(dims, image_size, patch_size, hidden_size, num_heads)
        if router_input not in ROUTER_INPUTS:
            raise ValueError(f"router_input must be one of {', '.join(ROUTER_INPUTS)}, got {router_input!r}")
        if num_classes is not None:
            num_classes = positive_int("num_classes", num_classes)
        self.config = {"name": "mode", "in_channels": in_channels, "image_size": image_size,
                       "patch_size": patch_size, "hidden_size": hidden_size, "depth": depth, "num_heads": num_heads,
                       "num_experts": num_experts, "top_k": top_k, "expert_hidden": expert_hidden,
                       "num_classes": num_classes, "dims": dims, "out_channels": out_channels,
                       "router_input": router_input}
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        self.patch_size, self.dims, self.num_classes = patch_size, dims, num_classes
        self.grid_size = image_size // patch_size
        self.num_tokens = self.grid_size**dims
        self.patch = (nn.Conv2d if dims == 2 else nn.Conv1d)(in_channels, hidden_size, patch_size, stride=patch_size)
        self.register_buffer("pos", sincos_positions(self.grid_size, hidden_size, dims)[None], persistent=False)
        self.time_embed = TimeClassEmbedding(256, hidden_size, None)
        self.class_embed = nn.Embedding(num_classes + 1, hidden_size) if num_classes is not None else None
        self.blocks = nn.ModuleList(MoDEBlock(hidden_size, num_heads, num_experts, top_k, expert_hidden)
                                    for _ in range(depth))
        self.norm_out = nn.RMSNorm(hidden_size, eps=1e-6)
        self.out = nn.Linear(hidden_size, patch_size**dims * out_channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self._cache = None

    # ----------------------------------------------------------------------------------------------- conditioning
    def conditioning(self, t: torch.Tensor, class_labels=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, r) for network times t (B,): c = noise embedding (+ class embedding) added before attention, and
        the router input r (the noise embedding alone, or c when ``router_input="noise_and_class"``)."""
        noise = self.time_embed(t, None)
        labels = prepare_labels(class_labels, t.shape[0], self.num_classes, t.device)
        c = noise if labels is None else noise + self.class_embed(labels)
        return c, (noise if self.config["router_input"] == "noise" else c)

    @torch.no_grad()
    def routing(self, t, class_labels=None) -> dict[str, torch.Tensor]:
        """Router decision of every block at network times t (M,): ``probs`` (depth, M, E) full softmax,
        ``index`` / ``weight`` (depth, M, k) the chosen experts and their renormalised probabilities, and
        ``usage`` (depth, M, E) the sparse mixture weights (weight scattered to the chosen experts)."""
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).to(self.pos.device)
        _, r = self.conditioning(t, class_labels)
        probs, index, weight = [], [], []
        for block in self.blocks:
            p, i, w, _ = block.route(r)
            probs.append(p), index.append(i), weight.append(w)
        probs, index, weight = torch.stack(probs), torch.stack(index), torch.stack(weight)
        usage = torch.zeros_like(probs).scatter(-1, index, weight)
        return {"probs": probs, "index": index, "weight": weight, "usage": usage}

    # ----------------------------------------------------------------------------------------------- expert cache
    @torch.no_grad()
    def precompute_experts(self, times, class_labels=None) -> None:
        """Fix the router decision at each network time in ``times`` (M,) and cache the fused top-k experts.

        With ``router_input="noise_and_class"`` the cache is keyed by (time, label) for every label in
        ``class_labels`` (default: all classes and the null class); with "noise" by time alone. ``forward`` in
        eval mode uses the fused MLP when every example's key is cached (times matched to 1e-6 relative).
        Weights are copied, so call again after changing the parameters (training clears nothing by itself,
        but train mode never reads the cache).
        """
        times = torch.as_tensor(times, dtype=torch.float32).reshape(-1).to(self.pos.device)
        if self.config["router_input"] == "noise_and_class" and self.num_classes is not None:
            labels = (torch.arange(self.num_classes + 1) if class_labels is None
                      else torch.as_tensor(class_labels).reshape(-1)).to(self.pos.device)
            key_t = times.repeat_interleave(labels.numel())
            key_y = labels.repeat(times.numel())
        else:
            key_t, key_y = times, None
        decision = self.routing(key_t, key_y)
        fused = [block.experts.fuse(decision["index"][d], decision["weight"][d]) for d, block in
                 enumerate(self.blocks)]
        self._cache = {"times": key_t, "labels": key_y, "fused": fused, "index": decision["index"]}

    def clear_expert_cache(self) -> None:
        """Drop the fused experts; forward routes dynamically again."""
        self._cache = None

    def _cache_keys(self, t: torch.Tensor, class_labels) -> torch.Tensor | None:
        """Cache entry index (B,) of every example, or None when some example has no entry."""
        cache = self._cache
        if cache is None or self.training:
            return None
        ct = cache["times"].to(t.dtype)
        match = (t[:, None] - ct[None, :]).abs() <= 1e-6 * (1 + t.abs()[:, None])
        if cache["labels"] is not None:
            labels = prepare_labels(class_labels, t.shape[0], self.num_classes, t.device)
            match = match & (labels[:, None] == cache["labels"][None, :])
        found = match.any(dim=1)
        if not bool(found.all()):
            return None
        return match.float().argmax(dim=1)

    # ----------------------------------------------------------------------------------------------- forward
    def aux_loss(self) -> dict[str, torch.Tensor]:
        """Router losses of the last unfused forward, averaged over blocks:

        ``balance`` = E * sum_i mean_b(P_bi) * f_i with f_i = (top-k slots given to expert i) / (B k)
        (switch-transformer load balancing, as in MoDE; 1 at uniform usage, up to E when collapsed), and
        ``z`` = mean_b(logsumexp(logits_b)^2) (router z-loss, Zoph et al. 2022, arXiv 2202.08906)."""
        routed = [b.last_routing for b in self.blocks if b.last_routing is not None]
        if not routed:
            raise ValueError("aux_loss() needs a forward pass with dynamic routing first (train mode or no cache)")
        bal, z = [], []
        for probs, top_i, _, logits in routed:
            e = probs.shape[-1]
            frac = F.one_hot(top_i, e).float().sum(dim=(0, 1)) / top_i.numel()
            bal.append(e * (probs.mean(0) * frac).sum())
            z.append((torch.logsumexp(logits, dim=-1) ** 2).mean())
        return {"balance": torch.stack(bal).mean(), "z": torch.stack(z).mean()}

    def _check_input(self, x) -> None:
        expected = (self.in_channels,) + (self.image_size,) * self.dims
        if not torch.is_tensor(x) or x.ndim != self.dims + 2 or tuple(x.shape[1:]) != expected:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}) for this MoDE net, got {shape}")

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, p**dims * C_out) -> (B, C_out, *spatial), row-major patch grid (as the DiT)."""
        b, g, p, c = tokens.shape[0], self.grid_size, self.patch_size, self.out_channels
        if self.dims == 1:
            return tokens.reshape(b, g, p, c).permute(0, 3, 1, 2).reshape(b, c, g * p)
        return tokens.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        self._check_input(x)
        t = prepare_time(t, x.shape[0], x)
        c, r = self.conditioning(t, class_labels)
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)
        keys = self._cache_keys(t, class_labels)
        shared = keys is not None and bool((keys == keys[0]).all())
        for d, block in enumerate(self.blocks):
            fused = None
            if keys is not None:
                weights = self._cache["fused"][d]
                fused = tuple(w[keys[0]] if shared else w[keys] for w in weights)
                fused = tuple(w.to(h.dtype) for w in fused)
            h = block(h, c, r, fused)
        return self.unpatchify(self.out(self.norm_out(h)))
