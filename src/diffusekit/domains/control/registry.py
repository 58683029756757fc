"""The policy method registry behind ``diffusekit policy`` and ``bench policy``.

``POLICY_METHODS`` maps a method name to a ``PolicyMethod`` of three callables:

* ``train(env_id, *, demos, seed, steps, progress) -> policy``: fit on scripted demonstrations of ``env_id``;
* ``load(folder) -> policy``: read a checkpoint written by ``policy.save(folder)`` (safetensors + config.json);
* ``act(policy, windows, generators) -> chunks``: one batched query, observation windows (B, n_obs, obs_dim) to
  action chunks (B, H, act_dim), with one ``torch.Generator`` per row for any sampling noise.

A policy object has ``n_obs``, ``n_action``, ``env_id`` and ``save(folder)``. ``evaluate`` runs any registered
method through the shared receding-horizon rollout. Other control methods (a driving or maze planner) register
with ``register_policy_method`` and get the CLI and the evaluation for free; their ``act`` may ignore chunks'
receding horizon by returning chunks of length n_obs - 1 + n_action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import envs_point  # noqa: F401  (registers the gymnasium ids)
from .demos import chunk_dataset, collect_demos
from .rollout import rollout, summarise

__all__ = ["PolicyMethod", "POLICY_METHODS", "register_policy_method", "get_policy_method", "evaluate",
           "load_policy"]


@dataclass(frozen=True)
class PolicyMethod:
    """A registered policy method: ``train``, ``load`` and ``act`` callables (see the module docstring)."""

    name: str
    summary: str
    train: Callable
    load: Callable
    act: Callable


POLICY_METHODS: dict[str, PolicyMethod] = {}


def register_policy_method(name: str, summary: str, *, train: Callable, load: Callable,
                           act: Callable | None = None) -> PolicyMethod:
    """Register a method under ``name`` (``act`` defaults to ``policy.act(windows, generators)``)."""
    method = PolicyMethod(name, summary, train, load, act or (lambda policy, w, g: policy.act(w, g)))
    POLICY_METHODS[name] = method
    return method


def get_policy_method(name: str) -> PolicyMethod:
    """The registered method ``name``; ValueError listing the known names otherwise."""
    if name not in POLICY_METHODS:
        raise ValueError(f"unknown policy method {name!r}; available: {', '.join(sorted(POLICY_METHODS))}")
    return POLICY_METHODS[name]


def load_policy(folder):
    """Load any registered method's checkpoint folder (its config.json names the method)."""
    from .diffusion_policy import read_policy_files

    method = read_policy_files(folder)[1].get("method")
    return get_policy_method(method).load(folder)


def evaluate(policy, env_id: str, seeds, *, method: str | None = None, progress: bool = False) -> tuple[dict, list]:
    """(summary dict, per-episode results) of receding-horizon rollouts, one episode per seed."""
    act = get_policy_method(method or policy.method).act
    results = rollout(lambda w, g: act(policy, w, g), env_id, seeds, n_obs=policy.n_obs, n_action=policy.n_action,
                      progress=progress)
    return summarise(results), results


def _demo_data(env_id: str, demos: int, seed: int, n_obs: int = 2, horizon: int = 16):
    return chunk_dataset(collect_demos(env_id, demos, seed), n_obs, horizon)


def _train_mse(env_id: str, *, demos: int = 100, seed: int = 0, steps: int = 2000, progress: bool = False):
    from .mse_policy import MSEPolicyConfig, train_mse_policy

    windows, chunks = _demo_data(env_id, demos, seed)
    return train_mse_policy(windows, chunks, MSEPolicyConfig(train_steps=steps, seed=seed), env_id=env_id,
                            progress=progress)


def _train_diffusion(env_id: str, *, demos: int = 100, seed: int = 0, steps: int = 2000, progress: bool = False):
    from .diffusion_policy import DiffusionPolicyConfig, train_diffusion_policy

    windows, chunks = _demo_data(env_id, demos, seed)
    return train_diffusion_policy(windows, chunks, DiffusionPolicyConfig(train_steps=steps, seed=seed),
                                  env_id=env_id, progress=progress)


def _train_mode(env_id: str, *, demos: int = 100, seed: int = 0, steps: int = 2000, progress: bool = False):
    from .mode_policy import MoDEPolicyConfig, train_mode_policy

    windows, chunks = _demo_data(env_id, demos, seed)
    return train_mode_policy(windows, chunks, MoDEPolicyConfig(train_steps=steps, seed=seed), env_id=env_id,
                             progress=progress)


def _load_mse(folder):
    from .mse_policy import MSEPolicy

    return MSEPolicy.load(folder)


def _load_diffusion(folder):
    from .diffusion_policy import ChunkDiffusionPolicy

    return ChunkDiffusionPolicy.load(folder)


def _load_mode(folder):
    from .mode_policy import MoDEPolicy

    return MoDEPolicy.load(folder)


register_policy_method("mse", "MLP regressor of action chunks trained by mean-squared error (the mode-averaging "
                       "baseline)", train=_train_mse, load=_load_mse)
register_policy_method("diffusion", "Diffusion Policy: FiLM 1-D UNet over action chunks, DDPM eps-loss (Chi et al. "
                       "2023, arXiv 2303.04137)", train=_train_diffusion, load=_load_diffusion)
register_policy_method("mode", "MoDE: noise-routed mixture-of-experts transformer policy with cached expert fusion "
                       "(Reuss et al. 2025, arXiv 2412.12953)", train=_train_mode, load=_load_mode)
