"""Shared pieces of the maze planners (Diffuser, arXiv 2205.09991; Trajectory Diffuser, arXiv 2407.16142).

* ``LimitsNormalizer``: states to [-1, 1] per dimension by the dataset's min/max (Diffuser's normaliser).
* ``InverseDynamics``: MLP (s_t, s_{t+1}) -> a_t (Ajay et al. 2023, Decision Diffuser, arXiv 2211.15657, and
  Trajectory Diffuser; here also Diffuser's action source, since our trajectories hold states only).
* ``TemporalValue``: V(tau_n, n), a 1-D conv net over a noisy state trajectory, Diffuser's value function (sec. 3.3).
* ``Critic``: Q(s, a) regressed to the return-to-go (Trajectory Diffuser's candidate selector).
* ``ARGenerator``: a GRU predicting (s_{k+1}, R_{k+1}) from the prefix (Trajectory Diffuser's feasible-trajectory
  generator; the paper also allows a Transformer).
* ``ddpm_posterior_step`` / ``inpaint_first_state``: the reverse step and the conditioning both planners share.
* ``fit``: a plain Adam loop with explicit generators (no global RNG), for the small nets here.
"""

from __future__ import annotations

import torch
from torch import nn

from ...core import VPDiscrete
from ...nets.embedding import timestep_embedding


class LimitsNormalizer(nn.Module):
    """x_norm = 2 (x - lo) / (hi - lo) - 1 per last-axis dimension, and back (Janner et al. 2022, arXiv 2205.09991)."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor):
        super().__init__()
        self.register_buffer("lo", torch.as_tensor(lo, dtype=torch.float32).clone())
        self.register_buffer("hi", torch.as_tensor(hi, dtype=torch.float32).clone())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * (x - self.lo) / (self.hi - self.lo).clamp_min(1e-6) - 1

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1) / 2 * (self.hi - self.lo).clamp_min(1e-6) + self.lo


def mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Mish())
    return nn.Sequential(*layers)


class InverseDynamics(nn.Module):
    """a_hat = f([s_t, s_{t+1}]) on normalised states; trained by MSE on the dataset's transitions."""

    def __init__(self, state_dim: int = 4, action_dim: int = 2, hidden: int = 128):
        super().__init__()
        self.net = mlp([2 * state_dim, hidden, hidden, action_dim])

    def forward(self, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([s, s_next], -1))


class Critic(nn.Module):
    """Q(s, a): normalised state and action -> return-to-go in units of ``rtg_scale`` (regressed by MSE)."""

    def __init__(self, state_dim: int = 4, action_dim: int = 2, hidden: int = 128):
        super().__init__()
        self.net = mlp([state_dim + action_dim, hidden, hidden, 1])

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([s, a], -1)).squeeze(-1)


class TemporalValue(nn.Module):
    """V(x_n, n): x_n (B, C, H) a noisy normalised state trajectory at diffusion step n -> (B,) predicted
    return-to-go of its first state (normalised). Three stride-2 conv blocks, then an MLP on [features, emb(n)]."""

    def __init__(self, channels: int = 4, horizon: int = 32, width: int = 32, time_dim: int = 32):
        super().__init__()
        self.time_dim = time_dim
        layers, cin = [], channels
        for cout in (width, 2 * width, 2 * width):
            layers += [nn.Conv1d(cin, cout, 5, stride=2, padding=2), nn.GroupNorm(8, cout), nn.Mish()]
            cin = cout
        self.conv = nn.Sequential(*layers)
        feat = cin * ((horizon + 7) // 8)
        self.head = mlp([feat + time_dim, 128, 1])

    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(1)
        emb = timestep_embedding(n.to(torch.float32).reshape(-1).expand(x.shape[0]), self.time_dim)
        return self.head(torch.cat([h, emb], 1)).squeeze(-1)


class ARGenerator(nn.Module):
    """GRU over tokens (s_k, R_k) (normalised state and return-to-go) predicting (s_{k+1}, R_{k+1}).

    ``rollout(s0, R0, length)`` feeds its own predictions back: one GRU cell call per generated state
    (Huang et al. 2024, arXiv 2407.16142, sec. 4.1 "feasible trajectory generation")."""

    def __init__(self, state_dim: int = 4, hidden: int = 128):
        super().__init__()
        self.state_dim = state_dim
        self.inp = nn.Linear(state_dim + 1, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.out = nn.Linear(hidden, state_dim + 1)

    def forward(self, states: torch.Tensor, rtg: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: states (B, H, S), rtg (B, H) -> predictions of tokens 1..H-1, (B, H - 1, S + 1)."""
        tokens = torch.cat([states, rtg[..., None]], -1)
        h = torch.zeros(states.shape[0], self.cell.hidden_size, dtype=states.dtype)
        outs = []
        for k in range(states.shape[1] - 1):
            h = self.cell(self.inp(tokens[:, k]), h)
            outs.append(tokens[:, k] + self.out(h))  # residual: predict the change of the token
        return torch.stack(outs, 1)

    def rollout(self, s0: torch.Tensor, rtg0: torch.Tensor, length: int) -> tuple[torch.Tensor, int]:
        """s0 (B, S), rtg0 (B,) -> (states (B, length, S) starting with s0, number of GRU cell calls = length - 1)."""
        token = torch.cat([s0, rtg0[:, None]], -1)
        h = torch.zeros(s0.shape[0], self.cell.hidden_size, dtype=s0.dtype)
        states = [s0]
        for _ in range(length - 1):
            h = self.cell(self.inp(token), h)
            token = token + self.out(h)
            states.append(token[:, :self.state_dim])
        return torch.stack(states, 1), length - 1


def inpaint_first_state(x: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """Conditioning by inpainting (Diffuser sec. 3.2): x (B, C, H) with x[:, :, 0] replaced by s0 (B, C), exactly."""
    x = x.clone()
    x[:, :, 0] = s0
    return x


def ddpm_posterior_step(schedule: VPDiscrete, n: int, x: torch.Tensor, x0_hat: torch.Tensor,
                        generator: torch.Generator | None) -> torch.Tensor:
    """x_{n-1} ~ q(x_{n-1} | x_n, x0 = x0_hat) (Ho et al. 2020, arXiv 2006.11239, eq. 6-7):

        mean = beta_n sqrt(abar_{n-1}) / (1 - abar_n) x0_hat + (1 - abar_{n-1}) sqrt(1 - beta_n) / (1 - abar_n) x_n,
        var  = beta_n (1 - abar_{n-1}) / (1 - abar_n),    abar_{-1} = 1,

    no noise added at n = 0. ``posterior_variance(schedule, n)`` gives var (Diffuser's Sigma_t for guidance)."""
    beta = float(schedule.betas[n])
    abar = float(schedule.alphas_cumprod[n])
    abar_prev = float(schedule.alphas_cumprod[n - 1]) if n > 0 else 1.0
    mean = beta * abar_prev**0.5 / (1 - abar) * x0_hat + (1 - abar_prev) * (1 - beta) ** 0.5 / (1 - abar) * x
    if n == 0:
        return mean
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return mean + posterior_variance(schedule, n) ** 0.5 * z


def posterior_variance(schedule: VPDiscrete, n: int) -> float:
    beta = float(schedule.betas[n])
    abar = float(schedule.alphas_cumprod[n])
    abar_prev = float(schedule.alphas_cumprod[n - 1]) if n > 0 else 1.0
    return beta * (1 - abar_prev) / (1 - abar)


def fit(module: nn.Module, loss_fn, n_examples: int, *, steps: int, batch_size: int, lr: float, seed: int,
        progress: bool = False, desc: str = "train") -> list[float]:
    """Adam on ``loss_fn(index_batch (B,) long, generator) -> scalar``; batches drawn with a seeded generator.
    Returns the loss history. ``progress`` shows a tqdm bar."""
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    history = []
    module.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        idx = torch.randint(n_examples, (batch_size,), generator=gen)
        loss = loss_fn(idx, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    module.eval()
    return history
