"""Discrete (mask-and-replace / absorbing) diffusion over K token classes plus a [MASK] state.

Gu et al. 2022, "Vector Quantized Diffusion Model for Text-to-Image Synthesis" (VQ-Diffusion, arXiv 2111.14822,
Sec. 3.2), building on Austin et al. 2021 (D3PM, arXiv 2107.03006). States are the K token classes 0 .. K-1
and [MASK] = K (S = K + 1 states). One forward step, for a token x_{t-1} = i < K:

    q(x_t = i | x_{t-1} = i) = alpha_t + beta_t,   q(x_t = j | i) = beta_t (j < K, j != i),   q(x_t = K | i) = gamma_t,

and [MASK] stays [MASK] (absorbing). Closed form (the "cumulative" chain, Eq. 7 of VQ-Diffusion):

    q(x_t = j | x0 = k) = alpha_bar_t [j = k] + beta_bar_t [j < K] + gamma_bar_t [j = K],
    alpha_bar_t = prod alpha_s,   1 - gamma_bar_t = prod (1 - gamma_s),
    beta_bar_t = (1 - alpha_bar_t - gamma_bar_t) / K.

The schedule is VQ-Diffusion's: alpha_bar_t and gamma_bar_t linear in t from (alpha_bar_1, gamma_bar_1) to
(alpha_bar_T, gamma_bar_T); the one-step values follow as alpha_t = alpha_bar_t / alpha_bar_{t-1},
gamma_t = 1 - (1 - gamma_bar_t) / (1 - gamma_bar_{t-1}), beta_t = (1 - alpha_t - gamma_t) / K. The absorbing chain
is beta = 0 with alpha_bar_t = 1 - gamma_bar_t and gamma_bar_T = 1 (at t = T every token is [MASK]).

Posterior (Bayes): q(x_{t-1} | x_t, x0) = q(x_t | x_{t-1}) q(x_{t-1} | x0) / q(x_t | x0). Where q(x_t | x0) = 0 (the
absorbing chain, x_t an unmasked token j != x0) the posterior is undefined; we use q(x_{t-1} | x_t) with a flat
prior, i.e. Q_t[:, x_t] normalised, which for the absorbing chain is the point mass on x_t (an unmasked token was
unmasked one step earlier too).

The network predicts p_theta(x0 | x_t, c) over the K classes (never [MASK]) and the reverse step is

    p_theta(x_{t-1} | x_t) = sum_{x0} q(x_{t-1} | x_t, x0) p~_theta(x0 | x_t),

with p~ the prediction restricted to the x0 that can reach x_t (q(x_t | x0) > 0) and renormalised: an impossible x0
has zero posterior weight. Everything is computed with explicit (S, S) float64 tables (K is small here); at t = 1 the
posterior is the point mass on x0, so the same KL is the decoder NLL -log p_theta(x0 | x_1).

Time: t = 1 .. T as in the paper (t = 0 is data); the network sees ``network_time(t) = 1000 t / T``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["MaskReplaceDiffusion", "categorical_kl", "sample_categorical", "uniform_draws"]


def uniform_draws(shape: Sequence[int], generator=None) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` (B, ...); with a list of B generators, sample i uses only generator i (so a
    sample does not depend on the batch it is drawn in, as ``core.noise.randn``)."""
    shape = tuple(shape)
    if isinstance(generator, Sequence) and not isinstance(generator, torch.Generator):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}; give one per sample")
        return torch.stack([torch.rand(shape[1:], generator=g, dtype=torch.float64) for g in generator])
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def sample_categorical(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """Inverse-CDF draw from categorical ``probs`` (B, N, S) (rows sum to 1) -> indices (B, N) long."""
    u = uniform_draws(probs.shape[:-1], generator).to(probs.device)
    cdf = probs.to(torch.float64).cumsum(-1)
    idx = (cdf < (u * cdf[..., -1])[..., None]).sum(-1)
    return idx.clamp_max(probs.shape[-1] - 1)


def categorical_kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = sum_s q_s (log q_s - log p_s) over the last axis; 0 log 0 = 0, p floored at 1e-30."""
    log_p = p.clamp_min(1e-30).log()
    return (torch.xlogy(q, q) - q * log_p).sum(-1)


def _linear(first: float, last: float, steps: int) -> torch.Tensor:
    if steps == 1:
        return torch.tensor([last], dtype=torch.float64)
    return first + (last - first) * torch.arange(steps, dtype=torch.float64) / (steps - 1)


class MaskReplaceDiffusion:
    """The mask-and-replace chain of VQ-Diffusion (``absorbing=True``: beta = 0, the absorbing-[MASK] chain).

    Args:
        num_classes: K token classes; [MASK] is index K.
        num_steps: T (CDCD uses T = 80).
        absorbing: True for beta = 0 with gamma_bar_T = 1.
        alpha_bar_1, alpha_bar_T, gamma_bar_1, gamma_bar_T: the linear schedule ends (mask-and-replace; for the
            absorbing chain only gamma_bar_1 is used). Defaults: VQ-Diffusion's ends except gamma_bar_T = 0.9,
            which leaves a total replace probability K beta_bar_T = 0.1 at t = T (with VQ-Diffusion's 0.99999
            the chain is absorbing in all but name).

    Tables (float64, index t = 0 .. T, t = 0 the identity): ``alpha_bar, beta_bar, gamma_bar``, ``alpha, beta,
    gamma``, ``Q`` (T+1, S, S) one-step ``Q[t, i, j] = q(x_t = j | x_{t-1} = i)``, ``Q_bar`` (T+1, S, S)
    ``q(x_t = j | x0 = i)``, ``posterior_table`` (T+1, K, S, S) ``[t, k, j, i] = q(x_{t-1} = i | x_t = j, x0 = k)``
    and ``support`` (T+1, K, S) ``q(x_t = j | x0 = k) > 0``.
    """

    def __init__(self, num_classes: int, num_steps: int = 80, *, absorbing: bool = True, alpha_bar_1: float = 0.99999,
                 alpha_bar_T: float = 9e-6, gamma_bar_1: float = 9e-6, gamma_bar_T: float = 0.9):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        K, T = num_classes, num_steps
        self.num_classes, self.num_steps, self.absorbing = K, T, bool(absorbing)
        self.mask_index, self.num_states = K, K + 1
        if absorbing:
            if not 0.0 <= gamma_bar_1 <= 1.0:
                raise ValueError(f"gamma_bar_1 must lie in [0, 1], got {gamma_bar_1}")
            gamma_bar = _linear(gamma_bar_1, 1.0, T)
            alpha_bar = 1.0 - gamma_bar
        else:
            for name, v in (("alpha_bar_1", alpha_bar_1), ("alpha_bar_T", alpha_bar_T), ("gamma_bar_1", gamma_bar_1),
                            ("gamma_bar_T", gamma_bar_T)):
                if not 0.0 < v < 1.0:
                    raise ValueError(f"{name} must lie in (0, 1) for the mask-and-replace chain, got {v}")
            alpha_bar = _linear(alpha_bar_1, alpha_bar_T, T)
            gamma_bar = _linear(gamma_bar_1, gamma_bar_T, T)
            if bool((alpha_bar + gamma_bar > 1.0).any()):
                raise ValueError("alpha_bar_t + gamma_bar_t must stay <= 1 (beta_bar_t >= 0)")
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        self.alpha_bar = torch.cat([one, alpha_bar])
        self.gamma_bar = torch.cat([zero, gamma_bar])
        self.beta_bar = (1.0 - self.alpha_bar - self.gamma_bar) / K
        if absorbing:
            self.beta_bar = torch.zeros_like(self.alpha_bar)
        alpha = self.alpha_bar[1:] / self.alpha_bar[:-1].clamp_min(1e-300)
        keep = (1.0 - self.gamma_bar[1:]) / (1.0 - self.gamma_bar[:-1]).clamp_min(1e-300)
        gamma = 1.0 - keep
        beta = torch.zeros_like(alpha) if absorbing else (1.0 - alpha - gamma) / K
        if bool((beta < -1e-12).any()):
            raise ValueError("this schedule needs a negative one-step replace probability beta_t; make alpha_bar "
                             "fall faster relative to 1 - gamma_bar")
        self.alpha = torch.cat([one, alpha])
        self.beta = torch.cat([zero, beta.clamp_min(0.0)])
        self.gamma = torch.cat([zero, gamma])
        self.Q = torch.stack([self._matrix(a, b, g) for a, b, g in zip(self.alpha, self.beta, self.gamma)])
        self.Q_bar = torch.stack([self._matrix(a, b, g) for a, b, g in
                                  zip(self.alpha_bar, self.beta_bar, self.gamma_bar)])
        self.posterior_table, self.support = self._posterior_tables()
        # the same tables laid out for gathering by (t, x_t): (T+1, S, K, S) and (T+1, S, K)
        self._by_xt = self.posterior_table.permute(0, 2, 1, 3).contiguous()
        self._reach_by_xt = self.support.permute(0, 2, 1).contiguous()
        self.config = {"num_classes": K, "num_steps": T, "absorbing": self.absorbing, "alpha_bar_1": alpha_bar_1,
                       "alpha_bar_T": alpha_bar_T, "gamma_bar_1": gamma_bar_1, "gamma_bar_T": gamma_bar_T}

    def _matrix(self, a, b, g) -> torch.Tensor:
        """(S, S) transition with keep a (+ b on the diagonal), replace b to each class, mask g; [MASK] absorbing."""
        K = self.num_classes
        m = torch.zeros(K + 1, K + 1, dtype=torch.float64)
        m[:K, :K] = b
        m[:K, :K] += torch.eye(K, dtype=torch.float64) * a
        m[:K, K] = g
        m[K, K] = 1.0
        return m

    def _posterior_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        K, S, T = self.num_classes, self.num_states, self.num_steps
        table = torch.zeros(T + 1, K, S, S, dtype=torch.float64)
        support = torch.zeros(T + 1, K, S, dtype=torch.bool)
        table[0] = torch.eye(S, dtype=torch.float64)[:K, None, :].expand(K, S, S)  # unused: x_{-1} does not exist
        support[0] = torch.eye(S, dtype=torch.bool)[:K]
        for t in range(1, T + 1):
            # joint[k, j, i] = q(x_t = j | x_{t-1} = i) q(x_{t-1} = i | x0 = k)
            joint = self.Q[t].T[None, :, :] * self.Q_bar[t - 1][:K, None, :]
            norm = joint.sum(-1, keepdim=True)
            flat = self.Q[t].T / self.Q[t].T.sum(-1, keepdim=True).clamp_min(1e-300)  # q(x_{t-1} | x_t), flat prior
            table[t] = torch.where(norm > 0, joint / norm.clamp_min(1e-300), flat[None].expand(K, S, S))
            support[t] = self.Q_bar[t][:K] > 0
        return table, support

    # --- forward process -------------------------------------------------------------------------------
    def _t(self, t, batch: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.shape[0] != batch or bool((t < 1).any()) or bool((t > self.num_steps).any()):
            raise ValueError(f"t must be integers in [1, {self.num_steps}] of shape ({batch},), got {t.tolist()}")
        return t

    def _check_x0(self, x0: torch.Tensor) -> torch.Tensor:
        if x0.dtype != torch.long or x0.ndim != 2:
            raise ValueError(f"x0 must be a long tensor of token indices (B, N), got {x0.dtype} {tuple(x0.shape)}")
        if x0.numel() and (int(x0.min()) < 0 or int(x0.max()) >= self.num_classes):
            raise ValueError(f"x0 tokens must lie in [0, {self.num_classes - 1}] (no [MASK] in data)")
        return x0

    def q_probs(self, x0: torch.Tensor, t) -> torch.Tensor:
        """q(x_t | x0) (B, N, S) float64 for tokens x0 (B, N) and t (B,) in 1 .. T (closed form above)."""
        x0 = self._check_x0(x0)
        t = self._t(t, x0.shape[0]).to(x0.device)
        return self.Q_bar.to(x0.device)[t[:, None], x0]

    def q_sample(self, x0: torch.Tensor, t, generator=None) -> torch.Tensor:
        """x_t ~ q(x_t | x0): tokens (B, N) with values in 0 .. K ([MASK] = K)."""
        return sample_categorical(self.q_probs(x0, t), generator)

    def prior_sample(self, batch: int, seq_len: int, generator=None) -> torch.Tensor:
        """x_T (B, N): [MASK] with probability gamma_bar_T, else a uniform class (exact for the absorbing chain;
        for mask-and-replace this drops the data-dependent alpha_bar_T [x_T = x0] term, alpha_bar_T = 9e-6)."""
        T, K = self.num_steps, self.num_classes
        rest = (1.0 - float(self.gamma_bar[T])) / K
        probs = torch.full((batch, seq_len, K + 1), rest, dtype=torch.float64)
        probs[..., K] = float(self.gamma_bar[T])
        return sample_categorical(probs, generator)

    # --- reverse process -------------------------------------------------------------------------------
    def posterior(self, x_t: torch.Tensor, x0_probs: torch.Tensor, t) -> torch.Tensor:
        """sum_k q(x_{t-1} | x_t, x0 = k) p~(x0 = k) (B, N, S) float64.

        ``x0_probs`` (B, N, K): a one-hot x0 gives the true posterior q(x_{t-1} | x_t, x0); the network's
        p_theta(x0 | x_t) gives p_theta(x_{t-1} | x_t). p~ is x0_probs restricted to q(x_t | x0) > 0 and
        renormalised (left as given where no class can reach x_t, e.g. an inconsistent negative)."""
        if x0_probs.shape != (*x_t.shape, self.num_classes):
            raise ValueError(f"x0_probs must have shape {(*x_t.shape, self.num_classes)}, got {tuple(x0_probs.shape)}")
        t = self._t(t, x_t.shape[0]).to(x_t.device)
        dev = x_t.device
        sel_t = t[:, None].expand_as(x_t)
        reach = self._reach_by_xt.to(dev)[sel_t, x_t]                                 # (B, N, K)
        p = x0_probs.to(torch.float64)
        restricted = p * reach
        mass = restricted.sum(-1, keepdim=True)
        p = torch.where(mass > 0, restricted / mass.clamp_min(1e-300), p)
        table = self._by_xt.to(dev)[sel_t, x_t]                                        # (B, N, K, S)
        return (p[..., None, :] @ table)[..., 0, :]

    def true_posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """q(x_{t-1} | x_t, x0) (B, N, S) float64 for class tokens x0 (B, N); equals ``posterior(x_t, one_hot(x0), t)``
        (the Bayes table, with the flat-prior fallback where q(x_t | x0) = 0)."""
        x0 = self._check_x0(x0)
        t = self._t(t, x_t.shape[0]).to(x_t.device)
        return self._by_xt.to(x_t.device)[t[:, None].expand_as(x_t), x_t, x0]

    def one_hot(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, N) class tokens -> (B, N, K) float64 one-hot."""
        return F.one_hot(self._check_x0(x0), self.num_classes).to(torch.float64)

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """Network time 1000 t / T (float32), the scale the sinusoidal time embeddings expect."""
        return t.to(torch.float32) * (1000.0 / self.num_steps)

    def x0_log_probs(self, model: Callable, x_t: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        """log p_theta(x0 | x_t, c) (B, N, K) float64 from ``model(x_t, network_time, **cond) -> logits (B, N, K)``."""
        logits = model(x_t, self.network_time(t).to(x_t.device), **cond)
        if logits.shape != (*x_t.shape, self.num_classes):
            raise ValueError(f"model must return logits of shape {(*x_t.shape, self.num_classes)}, "
                             f"got {tuple(logits.shape)}")
        return torch.log_softmax(logits.to(torch.float64), -1)

    def loss_terms(self, model: Callable, x0: torch.Tensor, generator=None, **cond) -> dict:
        """One forward pass of the VB objective at t ~ U{1..T} (uniform, p_t = 1/T; no importance sampling).

        Returns a dict with ``t`` (B,), ``x_t`` (B, N), ``log_x0`` = log p_theta(x0 | x_t, c) (B, N, K),
        ``model_posterior`` = p_theta(x_{t-1} | x_t) (B, N, S), ``vb`` (B,) = mean over tokens of
        KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t)) (at t = 1 this is -log p_theta(x0 | x_1), the decoder NLL)
        and ``aux`` (B,) = mean over tokens of the x0 cross-entropy -log p_theta(x0 | x_t, c).
        The prior term KL(q(x_T | x0) || p(x_T)) has no parameters and is left out."""
        x0 = self._check_x0(x0)
        b = x0.shape[0]
        t = torch.randint(1, self.num_steps + 1, (b,), generator=generator).to(x0.device)
        x_t = self.q_sample(x0, t, generator).to(x0.device)
        log_x0 = self.x0_log_probs(model, x_t, t, **cond)
        model_post = self.posterior(x_t, log_x0.exp(), t)
        true_post = self.true_posterior(x_t, x0, t)
        vb = categorical_kl(true_post, model_post).mean(-1)
        aux = -log_x0.gather(-1, x0[..., None])[..., 0].mean(-1)
        return {"t": t, "x_t": x_t, "log_x0": log_x0, "model_posterior": model_post, "vb": vb, "aux": aux}

    def vb_loss(self, terms: dict, *, aux_weight: float = 5e-4, adaptive_aux: bool = True) -> torch.Tensor:
        """L_vb + lambda_aux w_t CE(x0, p_theta(x0 | x_t)) per example (B,), w_t = 1 + t / T when ``adaptive_aux``
        (VQ-Diffusion's auxiliary loss; lambda_aux = 5e-4 in VQ-Diffusion and CDCD)."""
        w = 1.0 + terms["t"].to(torch.float64) / self.num_steps if adaptive_aux else 1.0
        return terms["vb"] + aux_weight * w * terms["aux"]

    @torch.no_grad()
    def sample(self, model: Callable, batch: int, seq_len: int, generator=None, *, callback=None,
               **cond) -> torch.Tensor:
        """Ancestral sampling x_T -> x_0 in T network calls: x_{t-1} ~ p_theta(x_{t-1} | x_t) (see the module
        docstring). ``generator``: a list of B generators (batch-size invariant samples), one generator or None.
        Returns class tokens (B, N) (p_theta(x_0 | x_1) puts no mass on [MASK])."""
        x = self.prior_sample(batch, seq_len, generator)
        for step in range(self.num_steps, 0, -1):
            t = torch.full((batch,), step, dtype=torch.long)
            probs = self.posterior(x, self.x0_log_probs(model, x, t, **cond).exp(), t)
            x = sample_categorical(probs, generator)
            if callback is not None:
                callback({"t": step, "x": x})
        return x
