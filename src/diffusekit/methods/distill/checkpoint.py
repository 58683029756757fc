"""Student checkpoints: a distilled student written through ``diffusekit.training.checkpoint`` (safetensors +
JSON, atomic, no pickle) so that ``diffusekit sample --model DIR`` rebuilds it and samples it at its native step
count.

A student checkpoint holds the student network's weights as ``model.<name>`` (no optimizer), its net config as
``model_config`` and

    extra_config = {"kind": "student",
                    "schedule": <schedule config>,
                    "loss": {"prediction", "scale_input", "sigma_data"},           # how the net is read
                    "student": {"method": <distillation method>,
                                "wrapper": {"name": "network" | "consistency" | "class", ...},
                                "native": {"sampler", "steps", "ts"},
                                "teacher": <teacher spec, e.g. "zoo:digits_unet">, ...}}

Wrappers: ``network`` is the ``NetworkDenoiser`` itself (progressive distillation, ProDiff, Rectified Diffusion,
reflow); ``consistency`` is ``ConsistencyDenoiser`` over it (``sigma_data``, ``t_min``); ``class`` names a Denoiser
class of ``diffusekit.methods.distill`` (``module``, ``class``, ``config``) rebuilt by its
``from_config(net, schedule, config)`` after its ``to_config()`` (SLAM, BOOT). The loaded denoiser carries
``native_sampling = {"sampler", "steps", "ts"}``: the registered sampler, its step count and its own grid (None:
the default grid for that many steps).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ...core.denoiser import Denoiser, NetworkDenoiser
from ...core.schedules import schedule_from_config
from ...nets import build_net
from ...training.checkpoint import CheckpointError, inference_state, load_state_strict, save_checkpoint
from .consistency import ConsistencyDenoiser

STUDENT_KIND = "student"
WRAPPER_PACKAGE = "diffusekit.methods.distill."


def _inner_network_denoiser(student: Denoiser) -> NetworkDenoiser:
    inner = getattr(student, "inner", student)
    if not isinstance(inner, NetworkDenoiser):
        raise ValueError(f"a student must be a NetworkDenoiser or wrap one as .inner; got {type(student).__name__}")
    return inner


def wrapper_config(student: Denoiser) -> dict:
    """The JSON description of how ``student`` wraps its network (see the module docstring)."""
    if type(student) is ConsistencyDenoiser:  # subclasses (SLAM's) describe themselves with to_config
        return {"name": "consistency", "sigma_data": student.sigma_data, "t_min": student.t_min}
    if type(student) is NetworkDenoiser:
        return {"name": "network"}
    cls = type(student)
    if not (cls.__module__.startswith(WRAPPER_PACKAGE) and hasattr(cls, "to_config") and hasattr(cls, "from_config")):
        raise ValueError(f"cannot save a {cls.__name__} student: a student Denoiser class must live in "
                         f"{WRAPPER_PACKAGE}* and define to_config() / from_config(net, schedule, config)")
    return {"name": "class", "module": cls.__module__, "class": cls.__name__, "config": student.to_config()}


def check_native(native: dict) -> dict:
    """Validate native sampling {"sampler": registered name, "steps": k >= 1, "ts": k + 1 floats or None}."""
    from ...samplers import get_sampler
    from . import samplers  # noqa: F401  (registers the students' samplers: consistency, one_step)

    if not isinstance(native, dict) or set(native) != {"sampler", "steps", "ts"}:
        raise ValueError(f"native sampling must be a dict with keys sampler, steps, ts; got {native!r}")
    get_sampler(native["sampler"])
    steps = native["steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"native steps must be an int >= 1; got {steps!r}")
    ts = native["ts"]
    if ts is not None:
        ts = [float(t) for t in torch.as_tensor(ts, dtype=torch.float64).flatten().tolist()]
        if len(ts) != steps + 1:
            raise ValueError(f"native ts must have steps + 1 = {steps + 1} points; got {len(ts)}")
    return {"sampler": native["sampler"], "steps": steps, "ts": ts}


def student_config(student: Denoiser, native: dict, *, method: str, teacher: str, **extra) -> dict:
    """``extra_config`` of a student checkpoint (also the ``student`` part of a zoo manifest)."""
    inner = _inner_network_denoiser(student)
    return {"kind": STUDENT_KIND, "schedule": inner.schedule.config(),
            "loss": {"prediction": inner.prediction, "scale_input": inner.scale_input,
                     "sigma_data": inner.sigma_data},
            "student": {"method": method, "wrapper": wrapper_config(student), "native": check_native(native),
                        "teacher": teacher, **extra}}


def save_student(out_dir, student: Denoiser, native: dict, *, method: str, teacher: str, step: int = 0,
                 train_config: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``student`` (a NetworkDenoiser or a wrapper of one) with its native sampling to ``out_dir`` as a
    diffusekit checkpoint (``checkpoint.safetensors`` then ``checkpoint.json``, each atomic). ``teacher``: where it
    was distilled from (``zoo:NAME`` or a folder); ``step``: optimizer steps it was trained for; ``extra``: more
    JSON under ``student``. Returns the folder."""
    net = _inner_network_denoiser(student).net
    net = getattr(net, "module", net)
    if not getattr(net, "config", None):
        raise ValueError("the student's network has no .config to rebuild it from (build it with nets.build_net)")
    cfg = student_config(student, native, method=method, teacher=teacher, **(extra or {}))
    return save_checkpoint(out_dir, model=net, ema_model=None, optimizer=None, step=int(step), config=train_config,
                           extra_config=cfg)


def build_student(net: torch.nn.Module, extra_config: dict, where: str = "student") -> Denoiser:
    """The student Denoiser over ``net`` (weights loaded, eval mode) as ``extra_config`` describes it, with its
    ``native_sampling`` attached. Raises CheckpointError (one line) for a description this diffusekit cannot
    rebuild."""
    try:
        schedule = schedule_from_config(extra_config["schedule"])
        loss = extra_config["loss"]
        info = extra_config["student"]
        wrapper = info["wrapper"]
        native = check_native(info["native"])
        inner = NetworkDenoiser(net, schedule, loss.get("prediction", "eps"), scale_input=loss.get("scale_input"),
                                sigma_data=loss.get("sigma_data", 0.5))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: unreadable student description ({type(err).__name__}: {err})") from None
    name = wrapper.get("name") if isinstance(wrapper, dict) else None
    if name == "network":
        student: Denoiser = inner
    elif name == "consistency":
        student = ConsistencyDenoiser(inner, sigma_data=wrapper.get("sigma_data", 0.5), t_min=wrapper.get("t_min"))
    elif name == "class" and str(wrapper.get("module", "")).startswith(WRAPPER_PACKAGE):
        try:
            cls = getattr(importlib.import_module(wrapper["module"]), wrapper["class"])
        except (ImportError, AttributeError, KeyError):
            raise CheckpointError(f"{where}: student wrapper {wrapper.get('module')}.{wrapper.get('class')} is not "
                                  "in this diffusekit") from None
        student = cls.from_config(net, schedule, wrapper.get("config") or {})
    else:
        raise CheckpointError(f"{where}: unknown student wrapper {wrapper!r}; this diffusekit rebuilds network, "
                              f"consistency and {WRAPPER_PACKAGE}* classes with from_config")
    # what `diffusekit sample` and CFGDenoiser ask of a model, where the wrapper class does not say it
    # (ConsistencyDenoiser; f = a x~ + r D is affine in D, so guidance on f is guidance on D)
    if not hasattr(student, "num_classes"):
        student.num_classes = inner.num_classes
    if inner.num_classes is not None and not hasattr(student, "null_class"):
        student.null_class = inner.null_class
    student.native_sampling = native
    return student


def load_student_denoiser(tensors: dict, meta: dict, path) -> Denoiser:
    """The student of a checkpoint written by ``save_student`` / ``diffusekit distill`` (``cli.load_denoiser``
    calls this for ``extra_config["kind"] == "student"``)."""
    where = str(path)
    if not meta.get("model_config"):
        raise CheckpointError(f"{where}: student checkpoint lacks its model_config")
    try:
        net = build_net(meta["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: cannot build the student network: {err}") from None
    load_state_strict(net, inference_state(tensors), where)
    net.eval()
    return build_student(net, meta.get("extra_config") or {}, where)


__all__ = ["STUDENT_KIND", "build_student", "check_native", "load_student_denoiser", "save_student",
           "student_config", "wrapper_config"]
