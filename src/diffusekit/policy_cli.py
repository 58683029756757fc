"""``diffusekit policy``: train and evaluate action-chunk policies on the control environments we own.

    diffusekit policy train --env point|push --method diffusion|mode|mse --out DIR [--demos 100] [--steps 2000]
                            [--seed 0] [--overwrite] [--no-progress]
    diffusekit policy train --env maze --method diffuser|trajectory_diffuser|autoregressive --out DIR
    diffusekit policy train --env drive --method diffusiondrive --out DIR
    diffusekit policy eval  --policy DIR [--env point] [--method NAME] [--episodes 100] [--seed 0]
                            [--sampler ddpm|ddim|...] [--sample-steps N] [--no-cache] [--gif ep.gif]
                            [--json results.json] [--overwrite] [--no-progress]

Methods come from ``diffusekit.domains.control.registry.POLICY_METHODS`` (``mse``, ``diffusion`` = Diffusion
Policy, arXiv 2303.04137; ``mode`` = MoDE, arXiv 2412.12953). ``train`` collects scripted demonstrations from
``--seed``, fits the method and writes DIR/model.safetensors + DIR/config.json atomically. ``eval`` runs
``--episodes`` seeded receding-horizon episodes (episode i: env seed ``--seed`` + i), prints success rate,
collisions and the routes taken, and can write the first episode as a GIF. The planners of
``domains.control.planners`` plan from their own data: ``--env maze`` (Diffuser, Trajectory Diffuser and its
autoregressive generator on return-labelled maze trajectories; ``--demos`` = episodes per scripted behaviour) and
``--env drive`` (DiffusionDrive on toy driving scenes; ``--demos`` = training scenes); their ``eval`` reports
return / success / network calls per decision (maze, ``--episodes`` episodes) or min-ADE / collisions / manoeuvre
coverage (drive, ``--episodes`` test scenes). Every input mistake ends in one
``error:`` line before any work starts; nothing is overwritten without ``--overwrite``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import UserError, user_input

HELP = ("train / evaluate diffusion policies and planners (Diffusion Policy, MoDE, MSE; Diffuser, Trajectory Diffuser; "
        "DiffusionDrive) on our control environments")

ENV_ALIASES = {"point": "diffusekit/PointMassBimodal-v0", "pointmass": "diffusekit/PointMassBimodal-v0",
               "PointMassBimodal": "diffusekit/PointMassBimodal-v0", "push": "diffusekit/PushBlock-v0",
               "PushBlock": "diffusekit/PushBlock-v0"}


def add_arguments(parser) -> None:
    """The ``policy train`` and ``policy eval`` sub-commands and their flags."""
    sub = parser.add_subparsers(dest="policy_command", required=True)
    fmt = parser.formatter_class  # defaults shown in --help, as for the other commands
    tr = sub.add_parser("train", help="fit a policy on scripted demonstrations", formatter_class=fmt)
    tr.add_argument("--env", default="point", help="environment: a gymnasium id or alias (point, push), or a "
                    "planning task (maze, drive)")
    tr.add_argument("--method", required=True, help="policy method (mse, diffusion, mode; maze: diffuser, "
                    "trajectory_diffuser, autoregressive; drive: diffusiondrive)")
    tr.add_argument("--out", required=True, help="checkpoint folder to write (model.safetensors, config.json)")
    tr.add_argument("--demos", type=int, default=None, help="scripted demonstration episodes (default 100; maze: "
                    "episodes per behaviour, 100; drive: training scenes, 4000)")
    tr.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    tr.add_argument("--seed", type=int, default=0, help="seed of the demonstrations and the training draws")
    tr.add_argument("--overwrite", action="store_true", help="replace the checkpoint files in --out")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev = sub.add_parser("eval", help="roll out a trained policy over seeded episodes", formatter_class=fmt)
    ev.add_argument("--policy", required=True, help="checkpoint folder written by 'policy train'")
    ev.add_argument("--env", default=None, help="environment (default: the one the policy was trained on)")
    ev.add_argument("--method", default=None, help="method name (default: from the checkpoint; must match it)")
    ev.add_argument("--episodes", type=int, default=100, help="number of seeded episodes")
    ev.add_argument("--seed", type=int, default=None, help="env seed of the first episode, then +1 each (default: the "
                    "benches' test seeds: 10000 for chunk policies, 1000 on the maze, 1 for the driving scenes)")
    ev.add_argument("--sampler", default=None, help="diffusion sampler (default: the checkpoint's)")
    ev.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    ev.add_argument("--no-cache", action="store_true", help="MoDE: route experts dynamically (no fused cache)")
    ev.add_argument("--gif", default=None, help="write the first episode as an animated GIF here")
    ev.add_argument("--json", default=None, help="write the summary and per-episode outcomes as JSON here")
    ev.add_argument("--overwrite", action="store_true", help="replace --gif / --json if they exist")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")


def _env_id(name: str) -> str:
    import gymnasium as gym

    from .domains.control import registry  # noqa: F401  (registers our env ids)

    env_id = ENV_ALIASES.get(name, name)
    if env_id not in gym.registry:
        ours = sorted(k for k in gym.registry if k.startswith("diffusekit/"))
        raise UserError(f"--env {name!r} is not a registered environment; ours: {', '.join(ours)} "
                        f"(aliases: {', '.join(ENV_ALIASES)})")
    from .domains.control.demos import DEMONSTRATORS

    if env_id not in DEMONSTRATORS:
        raise UserError(f"--env {env_id} has no scripted demonstrator; available: {', '.join(sorted(DEMONSTRATORS))}")
    return env_id


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def run(args) -> int:
    """Dispatch ``policy train`` / ``policy eval``."""
    return _train(args) if args.policy_command == "train" else _eval(args)


def _check_out(args):
    from .domains.control.diffusion_policy import CONFIG_FILE, MODEL_FILE
    from .io import check_output_dir, check_output_file

    out = check_output_dir(args.out, what="--out")
    if out.is_dir():
        for name in (MODEL_FILE, CONFIG_FILE):
            check_output_file(out / name, overwrite=args.overwrite, what="--out")
    return out


def _train_planner(args) -> int:
    from .domains.control.planners import PLANNER_ENVS, train_planner_checkpoint

    env = PLANNER_ENVS[args.env]
    if args.method not in env.methods:
        raise UserError(f"--method {args.method!r} is not a {env.name} planner; allowed: {', '.join(env.methods)}")
    data = env.default_data if args.demos is None else args.demos
    if data < 2:
        raise UserError(f"--demos ({env.data_help}) must be >= 2, got {data}")
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    out = _check_out(args)
    train_planner_checkpoint(env.name, args.method, out, data=data, steps=args.steps, seed=args.seed,
                             progress=_progress(args))
    print(f"trained {args.method} on {env.name} ({data} {env.data_help}, {args.steps} steps) -> {out}")
    return 0


def _train(args) -> int:
    from .domains.control.planners import PLANNER_ENVS
    from .domains.control.registry import get_policy_method

    if args.env in PLANNER_ENVS:
        return _train_planner(args)
    env_id = _env_id(args.env)
    with user_input("--method: "):
        method = get_policy_method(args.method)
    args.demos = 100 if args.demos is None else args.demos
    if args.demos < 2:
        raise UserError(f"--demos must be >= 2, got {args.demos}")
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    out = _check_out(args)
    policy = method.train(env_id, demos=args.demos, seed=args.seed, steps=args.steps, progress=_progress(args))
    policy.save(out)
    print(f"trained {args.method} on {env_id} ({args.demos} demos, {args.steps} steps) -> {out}")
    return 0


def _eval(args) -> int:
    import numpy as np

    from .domains.control.registry import evaluate, get_policy_method, load_policy
    from .domains.control.rollout import record_episode
    from .io import atomic_write_json, check_output_file

    folder = Path(args.policy)
    if not folder.is_dir():
        raise UserError(f"--policy {folder}: no such checkpoint folder")
    if args.episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {args.episodes}")
    if args.sample_steps is not None and args.sample_steps < 1:
        raise UserError(f"--sample-steps must be >= 1, got {args.sample_steps}")
    for flag, path, suffix in (("--gif", args.gif, ".gif"), ("--json", args.json, ".json")):
        if path is not None:
            if Path(path).suffix != suffix:
                raise UserError(f"{flag} must end in {suffix}; got {Path(path).name}")
            check_output_file(path, overwrite=args.overwrite, what=flag)
    from .domains.control.diffusion_policy import read_policy_files

    with user_input(f"--policy {folder}: "):
        state, config = read_policy_files(folder)
    if config.get("kind") == "planner":
        return _eval_planner(args, state, config)
    with user_input(f"--policy {folder}: "):
        policy = load_policy(folder)
    if args.method is not None and args.method != policy.method:
        raise UserError(f"--method {args.method} does not match the checkpoint's method {policy.method}")
    env_id = _env_id(args.env) if args.env is not None else _env_id(policy.env_id)
    if args.sampler is not None or args.sample_steps is not None or args.no_cache:
        if not hasattr(policy, "sampler"):
            raise UserError(f"--sampler/--sample-steps/--no-cache apply to diffusion policies, not {policy.method}")
        if args.sampler is not None:
            from .samplers import SAMPLERS

            if args.sampler not in SAMPLERS:
                raise UserError(f"--sampler {args.sampler!r} unknown; available: {', '.join(sorted(SAMPLERS))}")
            policy.sampler = args.sampler
        policy.steps = args.sample_steps or policy.steps
        if args.no_cache:
            if not hasattr(policy, "cache_experts"):
                raise UserError("--no-cache applies to the mode method only")
            policy.cache_experts = False
    first = 10_000 if args.seed is None else args.seed
    seeds = range(first, first + args.episodes)
    summary, results = evaluate(policy, env_id, seeds, progress=_progress(args))
    print(f"{policy.method} on {env_id}: success {summary['success_rate']:.2f}, collisions "
          f"{summary['collision_rate']:.2f}, routes left/right {summary['left_fraction']:.2f}/"
          f"{summary['right_fraction']:.2f} over {summary['episodes']} episodes")
    if args.gif is not None:
        from .plotting import save_gif

        act = get_policy_method(policy.method).act
        frames, _ = record_episode(lambda w, g: act(policy, w, g), env_id, results[0].seed, n_obs=policy.n_obs,
                                   n_action=policy.n_action)
        save_gif(frames, args.gif, fps=10)
        print(f"episode {results[0].seed} -> {args.gif}")
    if args.json is not None:
        episodes = [{"seed": r.seed, "success": r.success, "collision": r.collision, "steps": r.steps,
                     "route": r.route, "path": np.round(r.path, 4).tolist()} for r in results]
        atomic_write_json(args.json, {"policy": str(folder), "env_id": env_id, "summary": summary,
                                      "episodes": episodes})
    return 0


def _total_nfe(nfe) -> int:
    return int(nfe["total"]) if isinstance(nfe, dict) else int(nfe)


def _eval_planner(args, state: dict, config: dict) -> int:
    """``policy eval`` of a maze or drive planner checkpoint."""
    from .domains.control.planners import evaluate_planner_checkpoint, load_planner_checkpoint, planner_frames
    from .io import atomic_write_json

    if args.method is not None and args.method != config["method"]:
        raise UserError(f"--method {args.method} does not match the checkpoint's method {config['method']}")
    if args.env is not None and args.env != config["env"]:
        raise UserError(f"--env {args.env} does not match the checkpoint's environment {config['env']}")
    if args.sampler is not None or args.sample_steps is not None or args.no_cache:
        raise UserError("--sampler/--sample-steps/--no-cache apply to the chunk policies, not to planners")
    with user_input(f"--policy {args.policy}: "):
        model = load_planner_checkpoint(state, config)
    seed = args.seed if args.seed is not None else (1000 if config["env"] == "maze" else 1)
    summary = evaluate_planner_checkpoint(model, config, episodes=args.episodes, seed=seed)
    if config["env"] == "maze":
        print(f"{config['method']} on the maze: return {summary['return_mean']:.1f} ± {summary['return_std']:.1f}, "
              f"success {summary['success_rate']:.2f}, {_total_nfe(summary['nfe'])} network calls and "
              f"{1000 * summary['seconds_per_decision']:.0f} ms per decision over {args.episodes} episodes")
    else:
        print(f"{config['method']} on {summary['n_scenes']} driving scenes: min-ADE {summary['min_ade']:.2f} m, "
              f"chosen-plan collision {summary['collision']:.3f}, off-road {summary['off_road']:.3f}, manoeuvre "
              f"coverage {summary['coverage']:.2f}, {summary['nfe']} network calls, {summary['ms_per_plan']:.1f} ms "
              "per scene")
    if args.gif is not None:
        from .plotting import save_gif

        save_gif(planner_frames(model, config, seed=seed), args.gif, fps=10 if config["env"] == "maze" else 2)
        print(f"animation -> {args.gif}")
    if args.json is not None:
        atomic_write_json(args.json, {"policy": str(args.policy), "env": config["env"], "method": config["method"],
                                      "seed": seed, "summary": summary})
    return 0
