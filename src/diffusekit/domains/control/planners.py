"""Planning methods behind ``diffusekit policy`` for the maze and the driving scenes.

The chunk policies of ``registry`` act in receding-horizon rollouts of a demonstrator's environment; the planners
here have their own data and evaluation, so they get a small registry of their own with the same checkpoint
format (``model.safetensors`` + ``config.json``, atomic, no pickle):

* maze (``PointMazeEnv``, return-labelled offline trajectories from ``maze_data``): ``diffuser`` (Janner et al.
  2022, arXiv 2205.09991), ``trajectory_diffuser`` (Huang et al. 2024, arXiv 2407.16142) and ``autoregressive``
  (its generator alone), trained by ``planner_api.train_planner`` and scored by ``evaluate_planner`` (return,
  success, network calls and seconds per decision);
* drive (toy driving scenes of ``drive_env``): ``diffusiondrive`` (Liao et al. 2025, arXiv 2411.15139), trained
  by ``drive_diffusion.train_diffusiondrive`` and scored by ``drive_eval.evaluate_drive`` (min-ADE, collisions,
  manoeuvre coverage, diversity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PLANNER_ENVS", "PlannerEnv", "train_planner_checkpoint", "load_planner_checkpoint",
           "evaluate_planner_checkpoint", "planner_frames"]


@dataclass(frozen=True)
class PlannerEnv:
    """An environment whose methods plan from their own data: its methods and the default data size."""

    name: str
    methods: tuple[str, ...]
    default_data: int
    data_help: str


PLANNER_ENVS = {
    "maze": PlannerEnv("maze", ("diffuser", "trajectory_diffuser", "autoregressive"), 100,
                       "episodes per scripted behaviour"),
    "drive": PlannerEnv("drive", ("diffusiondrive",), 4000, "training scenes"),
}


def train_planner_checkpoint(env: str, method: str, folder, *, data: int, steps: int, seed: int,
                             progress: bool) -> dict:
    """Generate the data of ``env`` from ``seed``, train ``method`` for ``steps`` and write the checkpoint;
    returns its config."""
    from .diffusion_policy import save_policy_files

    if env == "maze":
        from .maze_data import generate_maze_dataset
        from .planner_api import train_planner

        model = train_planner(method, generate_maze_dataset(data, seed=seed), steps=steps, seed=seed,
                              progress=progress)
        config = {"kind": "planner", "env": env, "method": method, "planner": model.config}
    else:
        from .drive_diffusion import train_diffusiondrive
        from .drive_env import generate_scenes

        model = train_diffusiondrive(generate_scenes(data, seed=seed), steps=steps, seed=seed, progress=progress)
        config = {"kind": "planner", "env": env, "method": method, "planner": model.config}
    config["training"] = {"data": data, "steps": steps, "seed": seed}
    save_policy_files(folder, model.state_dict(), config)
    return config


def load_planner_checkpoint(state: dict, config: dict):
    """The trained model of a planner checkpoint (eval mode)."""
    if config["env"] == "maze":
        from .planner_api import load_planner

        return load_planner(state, config["planner"])
    from .drive_diffusion import load_diffusiondrive

    return load_diffusiondrive(state, config["planner"]).eval()


def evaluate_planner_checkpoint(model, config: dict, *, episodes: int, seed: int, on_step=None) -> dict:
    """Maze: ``episodes`` replanning episodes from env seeds ``seed``, ``seed`` + 1, ...; drive: ``episodes`` test
    scenes generated from ``seed``."""
    if config["env"] == "maze":
        from .planner_api import evaluate_planner

        return evaluate_planner(model, episodes, seed, on_step=on_step)
    from .drive_eval import evaluate_drive

    return evaluate_drive(model, n_scenes=episodes, seed=seed)


def planner_frames(model, config: dict, *, seed: int) -> list[np.ndarray]:
    """Animation frames: the first maze episode (RGB renders of every step), or DiffusionDrive's 2-step
    denoising on four scenes of ``seed``."""
    import torch

    if config["env"] == "maze":
        from .planner_api import evaluate_planner

        frames: list[np.ndarray] = []
        evaluate_planner(model, 1, seed, on_step=lambda ep, env: frames.append(env.render()))
        return frames
    from .drive_env import generate_scenes
    from .drive_eval import denoising_frames

    return denoising_frames(model, generate_scenes(4, seed), torch.Generator().manual_seed(seed))
