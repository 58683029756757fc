"""Planning metrics on the toy driving scenes, for DiffusionDrive and the vanilla diffusion-policy baseline.

A *planner* is any object with ``name``, ``nfe`` (network calls per plan) and
``plan_batch(scene_tensors, generator) -> (trajectories (B, K, 8, 2) metres, scores (B, K))``; the chosen plan
of a scene is its argmax-score trajectory (the first one when scores tie). ``evaluate_drive`` accepts a trained
``DiffusionDrive`` or ``VanillaDrivePolicy`` too and wraps it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .drive_diffusion import DiffusionDrive, plan_batch
from .drive_env import MANEUVERS, classify_plans, generate_scenes
from .drive_nets import SceneTensors
from .drive_vanilla import VanillaDrivePolicy, vanilla_plan_batch


@dataclass
class DiffusionDrivePlanner:
    """DiffusionDrive's truncated inference (``steps`` = 2 as in the paper)."""

    model: DiffusionDrive
    steps: int = 2
    name: str = "DiffusionDrive"

    @property
    def nfe(self) -> int:
        return self.steps

    def plan_batch(self, scene: SceneTensors, generator=None):
        return plan_batch(self.model, scene, generator, steps=self.steps)


@dataclass
class VanillaPlanner:
    """The vanilla diffusion policy sampled with DDIM from pure noise, ``k`` draws per scene."""

    policy: VanillaDrivePolicy
    steps: int = 20
    k: int = 20
    name: str = "vanilla"

    @property
    def nfe(self) -> int:
        return self.steps

    def plan_batch(self, scene: SceneTensors, generator=None):
        return vanilla_plan_batch(self.policy, scene, generator, steps=self.steps, k=self.k)


def as_planner(model_or_planner):
    if isinstance(model_or_planner, DiffusionDrive):
        return DiffusionDrivePlanner(model_or_planner)
    if isinstance(model_or_planner, VanillaDrivePolicy):
        return VanillaPlanner(model_or_planner)
    if hasattr(model_or_planner, "plan_batch"):
        return model_or_planner
    raise TypeError(f"expected a DiffusionDrive, VanillaDrivePolicy or planner; got {type(model_or_planner).__name__}")


def mean_pairwise_distance(plans: np.ndarray) -> float:
    """Diversity of K plans (K, T, 2): mean over pairs i < j of the mean waypoint distance ||tau_i - tau_j||."""
    k = len(plans)
    if k < 2:
        return 0.0
    d = np.linalg.norm(plans[:, None] - plans[None], axis=-1).mean(-1)
    return float(d[np.triu_indices(k, 1)].mean())


def evaluate_drive(model_or_planner, n_scenes: int = 200, seed: int = 1, *, batch_size: int = 50,
                   scenes=None) -> dict:
    """Plan on ``n_scenes`` test scenes from ``seed`` (or the given ``scenes``) and measure:

    * ``min_ade``: min over the K plans of the average displacement (m) to the scene's expert plan;
    * ``top1_ade``, ``collision``, ``off_road``: of the chosen (argmax-score) plan;
    * ``plans_valid``: fraction of all K plans that are collision-free and on the road;
    * ``diversity``: mean pairwise distance of the K plans (m), averaged over scenes;
    * ``modes_covered``: number of the scene's valid manoeuvres with at least one plan within 1.5 m ADE of it
      (nearest canonical manoeuvre), and ``coverage`` = that count / the number of valid manoeuvres;
    * ``nfe`` (network calls per plan) and ``ms_per_plan`` (wall time per scene for all K plans, batched).
    """
    planner = as_planner(model_or_planner)
    scenes = generate_scenes(n_scenes, seed) if scenes is None else list(scenes)
    gen = torch.Generator().manual_seed(seed)
    rows = {key: [] for key in ("min_ade", "top1_ade", "collision", "off_road", "plans_valid", "diversity",
                                "modes_covered", "coverage")}
    seconds = 0.0
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        tensors = SceneTensors.from_scenes(chunk)
        t0 = time.perf_counter()
        trajs, scores = planner.plan_batch(tensors, gen)
        seconds += time.perf_counter() - t0
        trajs, scores = trajs.numpy().astype(np.float64), scores.numpy()
        for s, tj, sc in zip(chunk, trajs, scores):
            ade = np.linalg.norm(tj - s.expert, axis=-1).mean(-1)
            chosen = int(sc.argmax())
            labels = set(classify_plans(s, tj).tolist())
            covered = sum(MANEUVERS.index(m) in labels for m in s.valid)
            rows["min_ade"].append(ade.min())
            rows["top1_ade"].append(ade[chosen])
            rows["collision"].append(bool(s.collides(tj[chosen])))
            rows["off_road"].append(bool(s.off_road(tj[chosen])))
            rows["plans_valid"].append(s.is_valid_plan(tj).mean())
            rows["diversity"].append(mean_pairwise_distance(tj))
            rows["modes_covered"].append(covered)
            rows["coverage"].append(covered / len(s.valid))
    out = {key: float(np.mean(v)) for key, v in rows.items()}
    out.update(nfe=int(planner.nfe), ms_per_plan=1000 * seconds / len(scenes), n_scenes=len(scenes),
               plans_per_scene=int(trajs.shape[1]))
    return out


def denoising_frames(model: DiffusionDrive, scenes, generator=None) -> list[np.ndarray]:
    """RGB frames (for ``plotting.save_gif``) of DiffusionDrive's truncated inference on each scene: the K
    anchors noised to t = 8, then the plans after each of the 2 DDIM steps (opacity = score, black = chosen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...plotting import figure_to_rgb
    from .drive_diffusion import plan_batch
    from .drive_env import render_scene

    frames = []
    for scene in scenes:
        trace: list = []
        plan_batch(model, SceneTensors.from_scenes([scene]), generator, trace=trace)
        for label, trajs, scores in trace:
            fig, ax = plt.subplots(figsize=(7, 2.6), dpi=80)
            sc = None if scores is None else {"DiffusionDrive": scores[0].numpy()}
            render_scene(scene, {"DiffusionDrive": trajs[0].numpy()}, ax=ax, scores=sc,
                         title=f"{label}; valid: {', '.join(scene.valid)}")
            if scores is not None:
                chosen = trajs[0, int(scores[0].argmax())].numpy()
                ax.plot(chosen[:, 0], chosen[:, 1], color="black", lw=2.5, alpha=0.6, zorder=6)
            fig.tight_layout()
            frames.append(figure_to_rgb(fig))
            plt.close(fig)
    return frames
