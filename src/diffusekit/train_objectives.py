"""What ``diffusekit train`` optimises: the ``objective`` and ``latent`` sections of its config.

    objective: {name: diffusion}                                   # the default: training.DiffusionLoss
    objective: {name: cfm, coupling: ot, sigma: 0.0}               # conditional flow matching (methods.flow_matching)
    objective: {name: interpolant, path: one_sided_linear, target: velocity}
    objective: {name: autoencoder, latent_channels: 2, downsample: 1, beta: 0.001}   # the first stage of latents
    latent: runs/ae                                                # train in this autoencoder's latent space

* ``cfm``: I-CFM (``coupling: independent``), OT-CFM (``ot``, exact minibatch OT through POT), SB-CFM (``sb``,
  entropic OT, needs ``sigma > 0``), Lipman's target FM (``target``) or VP-CFM (``vp``) from N(0, I) to the data
  (Tong et al. 2023, arXiv 2302.00482); ``loss.label_dropout`` applies. The checkpoint samples through
  ``flow_matching.CFMDenoiser`` (a velocity Denoiser on the flow schedule), so every sampler runs on it.
* ``interpolant``: a stochastic interpolant from N(0, I) to the data (Albergo, Boffi & Vanden-Eijnden 2023,
  arXiv 2303.08797). Only the one-sided Gaussian paths have a Denoiser view, so ``diffusekit sample`` can use
  them; the others train, and are sampled with ``methods.interpolants`` (ODE or SDE).
* ``autoencoder``: the KL-regularised convolutional autoencoder of ``methods.latent`` (Rombach et al. 2022,
  arXiv 2112.10752): reconstruction + beta KL; at the end its latent scale factor (1 / std of the latents) is
  fitted on the training data and saved with it, so the folder is ready for ``latent: DIR``.
* ``source: NAME`` (cfm and interpolant): transport from another dataset instead of N(0, I) (data -> data, e.g.
  ``gmm_ring8`` -> ``moons``); the two datasets are independent draws paired by index, re-paired by the coupling
  (cfm) or taken as given (interpolant). ``diffusekit sample`` then integrates the learned ODE from fresh draws of
  the source's test split (``sample_data_to_data``).
* ``latent: DIR``: the data are encoded once by the autoencoder saved in DIR (``methods.latent``) and a diffusion
  model (objective ``diffusion``) is trained on the latents; ``diffusekit sample`` decodes its samples.

The ``schedule`` and the ``loss`` section's ``prediction`` / ``weighting`` belong to the ``diffusion`` objective:
the flow objectives carry their own time and target, and setting those fields with them is an error.
"""

from __future__ import annotations

from .errors import UserError

OBJECTIVES = ("diffusion", "cfm", "interpolant", "autoencoder")
COUPLINGS = ("independent", "ot", "sb", "target", "vp")
_CFM_KEYS = ("name", "coupling", "sigma", "source")
_INTERPOLANT_KEYS = ("name", "path", "gamma", "gamma_scale", "target", "antithetic", "source")
_AUTOENCODER_KEYS = ("name", "latent_channels", "downsample", "base_channels", "latent_dim", "beta")


def objective_keys(name: str) -> tuple[str, ...]:
    return {"diffusion": ("name",), "cfm": _CFM_KEYS, "interpolant": _INTERPOLANT_KEYS,
            "autoencoder": _AUTOENCODER_KEYS}[name]


def resolve_objective(cfg: dict, args) -> None:
    """Merge ``--objective``, ``--coupling`` and ``--latent`` into ``cfg`` (in place) and check the sections."""
    objective = cfg.get("objective")
    if isinstance(objective, str):
        objective = {"name": objective}
    if objective is not None and not isinstance(objective, dict):
        raise UserError(f"objective must be a name ({', '.join(OBJECTIVES)}) or a mapping with a name; "
                        f"got {objective!r}")
    objective = dict(objective or {})
    if getattr(args, "objective", None) is not None and args.objective != objective.get("name"):
        objective = {"name": args.objective}
    objective.setdefault("name", "diffusion")
    if getattr(args, "coupling", None) is not None:
        objective["coupling"] = args.coupling
    name = objective["name"]
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
    unknown = sorted(set(objective) - set(objective_keys(name)))
    if unknown:
        raise UserError(f"objective {name} has no option {unknown[0]!r}; allowed: {', '.join(objective_keys(name))}")
    if name == "cfm":
        objective.setdefault("coupling", "independent")
        if objective["coupling"] not in COUPLINGS:
            raise UserError(f"unknown coupling {objective['coupling']!r}; allowed: {', '.join(COUPLINGS)}")
        objective.setdefault("sigma", 0.1 if objective["coupling"] == "sb" else 0.0)
    if name == "autoencoder":
        if cfg.get("conditional"):
            raise UserError("objective autoencoder is unconditional; drop --conditional")
        cfg.setdefault("train", {}).setdefault("ema_decay", None)  # the raw weights are the ones saved and used
    if name != "diffusion":
        stray = sorted(set(cfg.get("loss") or {}) - {"label_dropout"})
        if stray:
            raise UserError(f"loss option {stray[0]!r} belongs to the diffusion objective; objective {name} sets its "
                            "own target (only loss.label_dropout applies to cfm)")
        if cfg.get("schedule") is not None:
            raise UserError(f"objective {name} has its own time convention; drop the schedule section / --schedule")
    if name == "autoencoder":  # its loss draws from one generator per (micro-)batch
        cfg.setdefault("train", {}).setdefault("loss_noise", "per_rank")
    if "source" in objective:
        source = objective["source"]
        if not isinstance(source, str) or not source:
            raise UserError(f"objective {name} source must be a dataset name; got {source!r}")
        if cfg.get("conditional"):
            raise UserError(f"objective {name} with a data source is unconditional; drop --conditional")
        if name == "interpolant" and str(objective.get("path", "linear")).startswith(("one_sided", "mirror")):
            raise UserError(f"path {objective['path']!r} has a Gaussian (or the data itself) at t = 0; a data source "
                            "needs a two-sided path (linear, trig, encoding_decoding)")
    cfg["objective"] = objective
    if getattr(args, "latent", None) is not None:
        cfg["latent"] = args.latent
    latent = cfg.get("latent")
    if latent is not None:
        if not isinstance(latent, str) or not latent:
            raise UserError(f"latent must be the folder of a trained autoencoder; got {latent!r}")
        if name != "diffusion":
            raise UserError(f"latent: trains a diffusion model in the autoencoder's latent space; objective {name} "
                            "is not supported there (use objective diffusion)")


def encode_latents(cfg: dict, x):
    """The dataset's images encoded by the autoencoder in ``cfg["latent"]`` (or ``x`` unchanged without one)."""
    if cfg.get("latent") is None:
        return x
    from .methods.latent.autoencoder import load_autoencoder
    from .methods.latent.denoiser import encode_dataset

    if x.ndim != 4:
        raise UserError(f"latent: needs image data (N, C, H, W); this dataset has shape {tuple(x.shape)}")
    autoencoder = load_autoencoder(cfg["latent"])
    if tuple(x.shape[1:]) != tuple(autoencoder.image_shape):
        raise UserError(f"latent: the autoencoder in {cfg['latent']} takes images of shape "
                        f"{tuple(autoencoder.image_shape)}; the data have {tuple(x.shape[1:])}")
    return encode_dataset(autoencoder, x)


def build_objective(cfg: dict, schedule, *, conditional: bool):
    """(loss_fn, extra_config) for the Trainer from the resolved config."""
    from .training.losses import DiffusionLoss

    objective = cfg["objective"]
    name = objective["name"]
    if name == "diffusion":
        loss = DiffusionLoss(schedule, **cfg["loss"])
        if cfg.get("latent") is not None:
            from .methods.latent.checkpoint import latent_extra_config

            return loss, latent_extra_config(cfg["latent"], schedule, loss)
        return loss, {"schedule": cfg["schedule"], "loss": cfg["loss"]}
    if name == "autoencoder":
        from .methods.latent.autoencoder import AUTOENCODER_KIND, AutoencoderLoss

        if cfg["loss"]:
            raise UserError("objective autoencoder has its own loss (reconstruction + beta KL); drop the loss section")
        try:
            loss = AutoencoderLoss(float(objective.get("beta", 1e-3)))
        except (TypeError, ValueError) as err:
            raise UserError(f"objective autoencoder: {err}") from None
        return loss, {"kind": AUTOENCODER_KIND, "scale_factor": 1.0, "loss_config": loss.config()}
    if name == "cfm":
        from .methods.flow_matching import CFMLoss, cfm_extra_config, make_matcher

        try:
            matcher = make_matcher(objective["coupling"], sigma=float(objective["sigma"]))
        except (TypeError, ValueError) as err:
            raise UserError(f"objective cfm: {err}") from None
        loss = CFMLoss(matcher, source="data" if "source" in objective else "gaussian",
                       label_dropout=float(cfg["loss"].get("label_dropout", 0.0)))
        return loss, {**cfm_extra_config(loss), "source": objective.get("source")}
    from .methods.interpolants import InterpolantLoss

    if conditional:
        raise UserError("objective interpolant trains unconditional fields; drop --conditional (or use cfm)")
    options = {k: v for k, v in objective.items() if k not in ("name", "source")}
    if "source" in objective:
        options["pairing"] = "given"  # independent draws paired by index (per-example noise cannot re-shuffle)
    if str(options.get("path", "")).startswith("one_sided"):
        options.setdefault("gamma", "zero")  # a one-sided path's noise is its Gaussian end; it has no extra latent
    try:
        loss = InterpolantLoss(**options)
    except (TypeError, ValueError) as err:
        raise UserError(f"objective interpolant: {err}") from None
    return loss, {"kind": INTERPOLANT_KIND, "loss": loss.config(), "source": objective.get("source")}


INTERPOLANT_KIND = "interpolant"


def load_interpolant_denoiser(tensors, meta: dict, path):
    """The Denoiser view of an interpolant checkpoint (one-sided Gaussian paths; a one-line error otherwise).

    The returned ``InterpolantDenoiser`` gets the network as ``.net`` so the CLI reads its data shape."""
    from .methods.interpolants import InterpolantLoss
    from .training.checkpoint import CheckpointError, load_inference_net

    extra = meta.get("extra_config") or {}
    if extra.get("kind") != INTERPOLANT_KIND or not meta.get("model_config"):
        raise CheckpointError(f"{path}: not an interpolant checkpoint")
    net = load_inference_net(tensors, meta, str(path))
    try:
        denoiser = InterpolantLoss.from_config(extra["loss"]).denoiser(net)
    except ValueError as err:
        raise UserError(f"{path}: {err}; sample it with diffusekit.methods.interpolants (ODE/SDE)") from None
    denoiser.net = net
    denoiser.num_classes = None  # interpolant fields are unconditional
    return denoiser


def autoencoder_net(cfg: dict, x_shape: tuple) -> dict:
    """The ``net`` section of an autoencoder run: a ``kl_autoencoder`` sized for the images."""
    if len(x_shape) != 4 or x_shape[-1] != x_shape[-2]:
        raise UserError(f"objective autoencoder takes square images (N, C, H, H); this data has shape {x_shape}")
    options = {k: v for k, v in cfg["objective"].items() if k not in ("name", "beta")}
    if cfg.get("net") and set(cfg["net"]) - {"name"}:
        raise UserError("objective autoencoder sizes its own network; set latent_channels, downsample, base_channels "
                        "or latent_dim in the objective section instead of a net section")
    return {"name": "kl_autoencoder", "in_channels": x_shape[1], "image_size": x_shape[-1], **options}


def build_autoencoder(net_config: dict):
    from .methods.latent.autoencoder import KLAutoencoder

    try:
        return KLAutoencoder(**{k: v for k, v in net_config.items() if k != "name"})
    except (TypeError, ValueError) as err:
        raise UserError(f"objective autoencoder: {err}") from None


def finish_autoencoder(trainer, x) -> float:
    """Fit the latent scale factor of a trained autoencoder on the training images (LDM App. G) and record it in
    the model, its EMA copy and the checkpoint's extra config; returns it. The caller saves the checkpoint."""
    import torch

    model = trainer.model
    was_training = model.training
    with torch.no_grad():
        scale = model.fit_scale_factor(x)
        if trainer.ema_model is not None:
            trainer.ema_model.scale_factor.fill_(scale)
    model.train(was_training)
    trainer.extra_config["scale_factor"] = float(scale)
    return float(scale)


def source_tensor(cfg: dict, x, seed: int):
    """The source draws of a data -> data objective, as many as ``x`` has rows, or None (Gaussian source)."""
    source = cfg["objective"].get("source")
    if source is None:
        return None
    from .data import load_dataset

    x0 = load_dataset(source, "train", n=len(x), seed=seed).x
    if x0.shape != x.shape:
        raise UserError(f"objective source {source!r} gives items of shape {tuple(x0.shape[1:])} and only "
                        f"{len(x0)} of them; the data need {len(x)} of shape {tuple(x.shape[1:])}")
    return x0


def is_data_to_data(spec: str) -> bool:
    """Whether ``spec`` is a checkpoint folder of a data -> data flow (cfm or interpolant with a ``source``). Reads
    only its metadata; anything unreadable is left to ``cli.load_denoiser`` to report."""
    import json
    from pathlib import Path

    from .training.checkpoint import META_FILE

    meta_file = Path(spec) / META_FILE
    if spec.startswith(("zoo:", "diffusers:")) or not meta_file.is_file():
        return False
    try:
        extra = json.loads(meta_file.read_text()).get("extra_config") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(extra, dict) and extra.get("kind") in ("cfm", INTERPOLANT_KIND) and bool(extra.get("source"))


def sample_data_to_data(path, *, count: int, steps: int, seed: int):
    """(x0, x1, source name): ``count`` fresh draws of the source dataset's test split and their images under the
    learned ODE, Euler with ``steps`` steps from t = 0 to 1 (cfm: dx/dt = v(x, 1000 t); interpolant: the drift b)."""
    from .data import load_dataset
    from .training.checkpoint import load_checkpoint, load_inference_net

    tensors, meta = load_checkpoint(path)
    extra = meta["extra_config"]
    source = extra["source"]
    net = load_inference_net(tensors, meta, str(path))
    x0 = load_dataset(source, "test", n=count, seed=seed).x
    import torch

    with torch.no_grad():
        if extra["kind"] == "cfm":
            from .methods.flow_matching import integrate_flow

            return x0, integrate_flow(net, x0, steps), source
        from .methods.interpolants import InterpolantFields, InterpolantLoss, grid_interpolant, sample_interpolant_ode

        loss = InterpolantLoss.from_config(extra["loss"])
        if loss.target != "velocity":
            raise UserError(f"{path}: a data-to-data interpolant trained on {loss.target!r} needs a second field for "
                            "its drift; sample it with diffusekit.methods.interpolants")
        fields = InterpolantFields(loss.interpolant, velocity=loss.field(net))
        return x0, sample_interpolant_ode(fields, x0, grid_interpolant(steps)), source
