"""Safe, pickle-free training checkpoints.

A checkpoint is a directory holding two files:

``checkpoint.safetensors``
    Every tensor of the training state:

    * ``model.<name>`` -- the model's ``state_dict()``;
    * ``ema.<name>`` -- the EMA copy's ``state_dict()`` (absent when EMA is off);
    * ``optim.state.<param index>.<key>`` -- the optimizer's per-parameter state
      (for AdamW: ``step``, ``exp_avg``, ``exp_avg_sq``); Python scalars are stored as
      0-d tensors and their Python type is recorded in the JSON so they come back as
      the same type;
    * ``optim.group.<group index>.<key>`` -- any tensor-valued param-group entry
      (rare; e.g. a tensor ``lr``);
    * ``rng.<name>`` -- random-generator states as ``uint8`` tensors;
    * anything else the caller passes in ``extra_tensors`` (the trainer stores its
      data-order permutation and its loss history this way).

    The safetensors header also embeds the full JSON metadata (below) plus a SHA-256
    digest of all tensor contents, so the tensor file is self-describing and silent
    bit-rot in the tensor payload is detected on load.

``checkpoint.json``
    Human-readable metadata: format version, step, train config, model config (from
    ``model.config`` when the model has one), the caller's ``extra_config``, the
    optimizer class and param-group hyperparameters, and a random ``checkpoint_id``
    shared with the tensor file.

Why this layout: safetensors cannot execute code on load (unlike pickle /
``torch.load``), so a checkpoint from an untrusted source is safe to open; the JSON is
readable without any ML stack.

Atomicity: each file is written with :func:`diffusekit.io.atomic_write` (a temporary file in
the same directory, flushed and ``fsync``-ed, then moved over the old file with ``os.replace``,
atomic on POSIX and Windows; the directory is fsync-ed after each rename). The tensor file goes first and
the JSON last. A crash therefore leaves either the old pair, or (crash between the two
renames) a new tensor file next to the old JSON. The loader detects the latter by the
``checkpoint_id`` mismatch and uses the metadata embedded in the (complete, consistent)
new tensor file, with a warning -- it never mixes old metadata with new tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "TENSORS_FILE",
    "META_FILE",
    "check_model_config",
    "config_to_dict",
    "load_checkpoint",
    "load_model_weights",
    "load_state_strict",
    "optimizer_state_from_tensors",
    "optimizer_state_to_tensors",
    "save_checkpoint",
    "tensors_digest",
]

CHECKPOINT_FORMAT = "diffusekit-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
TENSORS_FILE = "checkpoint.safetensors"
META_FILE = "checkpoint.json"
_HEADER_KEY = "diffusekit"  # key of the embedded JSON metadata in the safetensors header


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, corrupt, or does not fit the model/trainer."""


# ----------------------------------------------------------------------------- helpers


def config_to_dict(cfg: Any) -> dict | None:
    """Return a JSON-normalised dict for a config object, or None when there is none.

    Accepts a dataclass instance, a mapping or an object with ``to_dict()``; the value
    is round-tripped through JSON (tuples become lists, unknown objects become their
    ``str``) so that a config read back from ``checkpoint.json`` compares equal to a
    freshly normalised one.
    """
    if cfg is None:
        return None
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    elif not isinstance(cfg, Mapping) and callable(getattr(cfg, "to_dict", None)):
        cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
        raise ValueError(
            f"model.config must be a dataclass, a mapping or have to_dict(); got {type(cfg).__name__}"
        )
    return json.loads(json.dumps(dict(cfg), sort_keys=True, default=str))


def _model_config(model: torch.nn.Module) -> dict | None:
    return config_to_dict(getattr(model, "config", None))


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of all tensors (sorted by name).

    Independent of the file layout, so it can be computed before saving and again after
    loading; a mismatch means the tensor payload was altered on disk.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            h.update(raw.numpy().data)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Kept for older imports: :func:`diffusekit.io.atomic_write`."""
    atomic_write(path, write)


def _cpu_copy(t: torch.Tensor) -> torch.Tensor:
    # clone: safetensors refuses tensors that share storage (tied weights, views).
    return t.detach().to("cpu").contiguous().clone()


# ------------------------------------------------------------------- optimizer state


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Flatten ``optimizer.state_dict()`` into (tensors, JSON description).

    Tensors go to ``optim.state.<idx>.<key>`` / ``optim.group.<g>.<key>``; Python
    scalars in the per-parameter state become 0-d tensors whose type is recorded so that
    :func:`optimizer_state_from_tensors` restores them exactly.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalar_types: dict[str, str] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            name = f"{idx}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[f"optim.state.{name}"] = _cpu_copy(value)
            elif isinstance(value, bool):
                tensors[f"optim.state.{name}"] = torch.tensor(value)
                scalar_types[name] = "bool"
            elif isinstance(value, int):
                tensors[f"optim.state.{name}"] = torch.tensor(value, dtype=torch.int64)
                scalar_types[name] = "int"
            elif isinstance(value, float):
                tensors[f"optim.state.{name}"] = torch.tensor(value, dtype=torch.float64)
                scalar_types[name] = "float"
            elif value is None:
                scalar_types[name] = "none"
            else:
                raise ValueError(
                    f"optimizer state {name!r} has unsupported type {type(value).__name__}; "
                    "only tensors, bool/int/float and None can be checkpointed"
                )
    groups = []
    tensor_group_keys: list[str] = []
    for g_idx, group in enumerate(sd["param_groups"]):
        out = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.group.{g_idx}.{key}"] = _cpu_copy(value)
                tensor_group_keys.append(f"{g_idx}.{key}")
            else:
                out[key] = value
        groups.append(out)
    try:
        groups = json.loads(json.dumps(groups))
    except TypeError as exc:
        raise ValueError(f"optimizer param groups are not JSON-serialisable: {exc}") from None
    desc = {
        "class": type(optimizer).__name__,
        "param_groups": groups,
        "state_indices": sorted(int(i) for i in sd["state"]),
        "scalar_types": scalar_types,
        "tensor_group_keys": tensor_group_keys,
    }
    return tensors, desc


def optimizer_state_from_tensors(
    tensors: Mapping[str, torch.Tensor], desc: Mapping, optimizer: torch.optim.Optimizer
) -> dict:
    """Rebuild a ``state_dict`` for ``optimizer`` from :func:`optimizer_state_to_tensors`.

    JSON turns tuples (e.g. AdamW ``betas``) into lists; they are turned back into
    tuples wherever the live optimizer holds a tuple, so the restored state is identical.
    """
    live_groups = optimizer.state_dict()["param_groups"]
    groups_desc = desc["param_groups"]
    if len(groups_desc) != len(live_groups):
        raise CheckpointError(
            f"optimizer has {len(live_groups)} param groups but the checkpoint has {len(groups_desc)}"
        )
    groups = []
    for saved, live in zip(groups_desc, live_groups):
        group = dict(saved)
        for key, value in list(group.items()):
            if isinstance(live.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)
        groups.append(group)
    for name in desc.get("tensor_group_keys", []):
        g_idx, key = name.split(".", 1)
        groups[int(g_idx)][key] = tensors[f"optim.group.{name}"]
    scalar_types = desc.get("scalar_types", {})
    state: dict[int, dict] = {int(i): {} for i in desc.get("state_indices", [])}
    prefix = "optim.state."
    for full, value in tensors.items():
        if not full.startswith(prefix):
            continue
        idx, key = full[len(prefix):].split(".", 1)
        kind = scalar_types.get(f"{idx}.{key}")
        if kind == "bool":
            value = bool(value.item())
        elif kind == "int":
            value = int(value.item())
        elif kind == "float":
            value = float(value.item())
        state.setdefault(int(idx), {})[key] = value
    for name, kind in scalar_types.items():
        if kind == "none":
            idx, key = name.split(".", 1)
            state.setdefault(int(idx), {})[key] = None
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------- save / load


def save_checkpoint(
    path_dir: str | os.PathLike,
    *,
    model: torch.nn.Module,
    ema_model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    generators: Mapping[str, torch.Generator | torch.Tensor] | None = None,
    config: Mapping | None = None,
    extra_config: Mapping | None = None,
    extra_meta: Mapping | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Atomically write ``checkpoint.safetensors`` then ``checkpoint.json`` into ``path_dir``.

    ``generators`` maps a name to a ``torch.Generator`` or to an already captured state
    tensor (``uint8``); each is stored as ``rng.<name>``. ``config`` is the train config
    as a dict; ``extra_config`` is free-form caller configuration (e.g. the diffusion
    schedule) recorded verbatim; ``extra_meta`` adds further JSON keys;
    ``extra_tensors`` adds tensors under their own names (they must not use the reserved
    prefixes ``model.``, ``ema.``, ``optim.``, ``rng.``). Returns the directory path.
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    path = Path(path_dir)
    path.mkdir(parents=True, exist_ok=True)

    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        tensors[f"model.{name}"] = _cpu_copy(value)
    if ema_model is not None:
        for name, value in ema_model.state_dict().items():
            tensors[f"ema.{name}"] = _cpu_copy(value)
    optim_desc = None
    if optimizer is not None:
        optim_tensors, optim_desc = optimizer_state_to_tensors(optimizer)
        tensors.update(optim_tensors)
    for name, gen in (generators or {}).items():
        state = gen.get_state() if isinstance(gen, torch.Generator) else gen
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
            raise ValueError(f"generator {name!r} must be a torch.Generator or a uint8 state tensor")
        tensors[f"rng.{name}"] = _cpu_copy(state)
    reserved = ("model.", "ema.", "optim.", "rng.")
    for name, value in (extra_tensors or {}).items():
        if name.startswith(reserved) or name in tensors:
            raise ValueError(f"extra tensor name {name!r} collides with a reserved prefix {reserved}")
        tensors[name] = _cpu_copy(value)

    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "checkpoint_id": uuid.uuid4().hex,
        "step": step,
        "train_config": dict(config) if config is not None else None,
        "model_config": _model_config(model),
        "extra_config": dict(extra_config) if extra_config is not None else None,
        "optimizer": optim_desc,
        "has_ema": ema_model is not None,
        "generators": sorted((generators or {}).keys()),
        "torch_version": torch.__version__,
        "tensors_sha256": tensors_digest(tensors),
    }
    for key, value in (extra_meta or {}).items():
        if key in meta:
            raise ValueError(f"extra_meta key {key!r} collides with a reserved checkpoint key")
        meta[key] = value
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None

    atomic_write(
        path / TENSORS_FILE,
        lambda tmp: save_file(tensors, str(tmp), metadata={_HEADER_KEY: meta_text}),
    )
    atomic_write(path / META_FILE, lambda tmp: tmp.write_text(meta_text + "\n", encoding="utf-8"))
    return path


def _read_meta_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint metadata file is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON (truncated or corrupt): {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} metadata file")
    return meta


def load_checkpoint(path_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint directory; returns ``(tensors on CPU, metadata dict)``.

    Uses safetensors only (no pickle, no ``torch.load``). Raises :class:`CheckpointError`
    naming the file when a file is missing, truncated, corrupt (checksum mismatch), of
    an unknown format version, or when the directory does not exist.
    """
    path = Path(path_dir)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    tensors_path = path / TENSORS_FILE
    meta_path = path / META_FILE
    json_meta = _read_meta_json(meta_path)
    if not tensors_path.is_file():
        raise CheckpointError(f"{tensors_path}: checkpoint tensor file is missing")
    try:
        with safe_open(str(tensors_path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{tensors_path}: unreadable safetensors file (truncated or corrupt): {msg}") from None
    try:
        embedded = json.loads(header[_HEADER_KEY])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(
            f"{tensors_path}: header lacks diffusekit metadata (not a diffusekit checkpoint)"
        ) from None
    meta = json_meta
    if embedded.get("checkpoint_id") != json_meta.get("checkpoint_id"):
        warnings.warn(
            f"{meta_path} belongs to another save than {tensors_path} (a save was interrupted "
            "between its two renames); using the metadata embedded in the tensor file",
            RuntimeWarning,
            stacklevel=2,
        )
        meta = embedded
    version = meta.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: unsupported checkpoint format_version {version!r}; "
            f"this diffusekit reads {CHECKPOINT_FORMAT_VERSION}"
        )
    if tensors_digest(tensors) != meta.get("tensors_sha256"):
        raise CheckpointError(f"{tensors_path}: tensor checksum mismatch (file is corrupt)")
    return tensors, meta


def _sub_state(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_model_config(meta: Mapping, model: torch.nn.Module, where: str) -> None:
    """Raise CheckpointError when ``model.config`` differs from the checkpoint's."""
    saved = meta.get("model_config")
    current = _model_config(model)
    if saved is not None and current is not None and saved != current:
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise CheckpointError(
            f"{where}: model config differs from the checkpoint's in {diff}; "
            "build the model with the saved config (checkpoint.json 'model_config')"
        )


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` that reports key/shape mismatches as one-line CheckpointErrors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{where}: shape mismatch for {k!r}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    module.load_state_dict(state, strict=True)


def inference_state(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights to sample with: the EMA copy when the checkpoint holds one, else the raw model's."""
    return _sub_state(tensors, "ema." if any(k.startswith("ema.") for k in tensors) else "model.")


def load_inference_net(tensors: Mapping[str, torch.Tensor], meta: Mapping, where: str) -> torch.nn.Module:
    """The checkpoint's network (``nets.build_net(meta["model_config"])``) with its ``inference_state`` loaded
    strictly, in eval mode. CheckpointError when the config is missing or cannot be built."""
    from ..nets import build_net

    if not meta.get("model_config"):
        raise CheckpointError(f"{where}: checkpoint has no model_config")
    try:
        net = build_net(dict(meta["model_config"]))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: cannot build the network: {err}") from None
    load_state_strict(net, inference_state(tensors), where)
    return net.eval()


def load_model_weights(path_dir: str | os.PathLike, model: torch.nn.Module, *, ema: bool = True) -> dict:
    """Load the EMA (default) or raw weights of a checkpoint into ``model`` for inference.

    Checks the model config when both sides have one. With ``ema=True`` on a checkpoint
    trained without EMA it raises CheckpointError (pass ``ema=False``) rather than
    silently returning different weights. Returns the checkpoint metadata.
    """
    tensors, meta = load_checkpoint(path_dir)
    where = str(Path(path_dir) / TENSORS_FILE)
    check_model_config(meta, model, where)
    prefix = "ema." if ema else "model."
    state = _sub_state(tensors, prefix)
    if ema and not meta.get("has_ema"):
        raise CheckpointError(f"{where}: checkpoint has no EMA weights; pass ema=False for the raw weights")
    load_state_strict(model, state, where)
    return meta
