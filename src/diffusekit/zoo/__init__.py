"""Shipped model assets: small checkpoints we train ourselves, as safetensors plus a JSON manifest.

``diffusekit.zoo.load(name)`` returns a ready object: a ``NetworkDenoiser`` (EMA weights, its schedule and
prediction type) for diffusion models, or the ``DigitsClassifier`` used by digits-FD. ``build`` retrains
the assets (``diffusekit zoo build``); each manifest records the config, training seconds, metrics and the
sha256 of the weights file, which ``load`` verifies.

Assets:
* ``digits_classifier``: CNN feature extractor / classifier on the digits train split.
* ``digits_unet``: class-conditional UNet on digits (eps prediction, discrete linear VP schedule).
* ``toy_ring8``: MLP denoiser on the 8-mode ring Gaussian mixture (v prediction, continuous VP).
* ``patches_unet``: unconditional UNet on 16 x 16 grey natural-image patches (eps prediction, discrete
  linear VP schedule); the natural-image prior of the inverse-problem, ResShift and OBC benches.
* ``digits_dit``: the digits task of ``digits_unet`` on a diffusion transformer (``nets.dit.DiT``, patch 2, width 96,
  depth 4; ``zoo.recipes.DIGITS_DIT_NET``), same schedule and loss.
* ``captions_clip``: a small CLIP (ViT image tower + caption transformer) on the captioned compositional digits.
* ``captions_judge``: attribute classifier (layout, per-slot digit / colour / thickness) on the captioned digits
  train split, the judge of text-to-image (``recipes_t2i``).
* ``captions_unet``: text-to-image cross-attention UNet on the 24 x 24 captioned digits with its frozen text encoder
  (a ``TextConditionedDenoiser``; CFG on the null caption via ``methods.text_conditioning``).
* ``digits_bn_classifier`` / ``digits04_bn_classifier``: BatchNorm CNNs on clean digits (all ten classes / 0-4),
  the sources of test-time adaptation (``methods.tta``).
* ``digits_student_2step``: a consistency-distilled student of ``digits_unet`` (``ConsistencyDenoiser``), sampled
  in 2 network calls by multistep consistency sampling (its ``native_sampling``).
* audio (issue 16; ``recipes_audio``, ``recipes_ezaudio``, ``recipes_makeanaudio2``): ``speech_prodiff`` (ProDiff TTS
  teacher + distilled 2-step student on the espeak-ng corpus, with a lexicon), ``events_auffusion`` (Auffusion
  text-to-audio mel UNet), ``events_ezaudio`` (EzAudio's masked-trained mel-frame DiT and its unmasked twin),
  ``events_makeanaudio2`` (the structured-caption and unordered-caption Make-An-Audio 2 models).
* video and personalisation (issue 17; ``recipes_video``, ``recipes_cbb``, ``recipes_eclipse``): ``moving_digits_video``
  (class- and first-frame-conditional factorised 3-D UNet), ``moving_digits_cbb`` (Consecutive Brownian Bridge
  interpolator), ``captions_eclipse`` (λ-ECLIPSE prior + unCLIP-style decoder on ``captions_clip`` embeddings).
These load through their manifest's ``"loader"`` (``module:function``, our own modules only).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..plotting import atomic_write_bytes, default_file_mode

ASSETS_DIR = Path(__file__).parent / "assets"
MODELS = ("digits_classifier", "digits_unet", "toy_ring8", "patches_unet", "digits_student_2step", "digits_dit",
          "captions_clip", "captions_judge", "captions_unet", "digits_bn_classifier", "digits04_bn_classifier",
          # audio (issue 16) and video / personalisation (issue 17); loaded through their manifest's "loader"
          "speech_prodiff", "events_auffusion", "events_ezaudio", "events_makeanaudio2",
          "moving_digits_video", "moving_digits_cbb", "captions_eclipse")


class ZooError(ValueError):
    """A zoo asset is unknown, missing or does not match its manifest."""


def _check_name(name: str) -> str:
    if name not in MODELS:
        raise ZooError(f"unknown zoo model {name!r}; available: {', '.join(MODELS)}")
    return name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(name: str, assets_dir: Path = ASSETS_DIR) -> dict:
    path = Path(assets_dir) / f"{_check_name(name)}.json"
    if not path.exists():
        raise ZooError(f"zoo model {name!r} is not built: {path} is missing; run `diffusekit zoo build`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ZooError(f"zoo manifest {path} is not valid JSON ({err.msg})") from None


def load_state(name: str, assets_dir: Path = ASSETS_DIR, *, verify: bool = True) -> tuple[dict, dict]:
    """(state_dict, manifest) of a zoo asset; checks the weights' sha256 against the manifest."""
    meta = manifest(name, assets_dir)
    path = Path(assets_dir) / meta["file"]
    if not path.exists():
        raise ZooError(f"zoo weights {path} are missing; run `diffusekit zoo build`")
    if verify and sha256_file(path) != meta["sha256"]:
        raise ZooError(f"zoo weights {path} do not match the sha256 in their manifest; rebuild them")
    try:
        return load_file(str(path)), meta
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ZooError(f"zoo weights {path} cannot be read: {err}") from None


def load(name: str, *, assets_dir: Path = ASSETS_DIR, verify: bool = True):
    """Load a zoo asset as a ready-to-use object (eval mode, float32, CPU)."""
    from ..core import NetworkDenoiser, schedule_from_config
    from ..metrics.digits import DigitsClassifier
    from ..nets import build_net

    state, meta = load_state(name, assets_dir, verify=verify)
    if "loader" in meta:  # "diffusekit.module:function", called as function(state, meta) -> ready object
        return _recipe_loader(meta["loader"])(state, meta)
    if meta["kind"] == "classifier":
        model = DigitsClassifier(**meta["net"])
        model.load_state_dict(state)
        return model.eval()
    if meta["kind"] == "bn_classifier":  # test-time adaptation sources (recipes_tta)
        from .recipes_tta import load_bn_classifier

        return load_bn_classifier(state, meta)
    if meta["kind"] == "attribute_classifier" or "text" in meta:  # captions_judge, text-to-image (recipes_t2i)
        from . import recipes_t2i

        loader = recipes_t2i.load_attribute_classifier if "text" not in meta else recipes_t2i.load_zoo_text_model
        return loader(state, meta)
    if meta["kind"] == "clip":  # captions_clip: CLIPModel with its tokenizer (recipes_clip)
        from .recipes_clip import load_clip

        return load_clip(state, meta)
    net = build_net(meta["net"])
    net.load_state_dict(state)
    net.eval()
    if meta["kind"] == "student":  # a distilled student: its wrapper and native sampling (methods/distill)
        from ..methods.distill.checkpoint import build_student

        return build_student(net, {"schedule": meta["schedule"], "loss": meta["loss"], "student": meta["student"]},
                             f"zoo:{name}")
    return NetworkDenoiser(net, schedule_from_config(meta["schedule"]), meta["loss"]["prediction"])


def _recipe_loader(spec: str):
    """The function named by a manifest's ``loader`` ("diffusekit.zoo.recipes_x:load_y"); only our own modules."""
    import importlib

    module, _, function = str(spec).partition(":")
    if not module.startswith("diffusekit.") or not function.isidentifier():
        raise ZooError(f"zoo manifest loader {spec!r} is not a diffusekit module:function")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as err:
        raise ZooError(f"zoo manifest loader {spec!r} cannot be imported: {err}") from None


def write_asset(name: str, state: dict, meta: dict, assets_dir: Path = ASSETS_DIR) -> dict:
    """Write NAME.safetensors and NAME.json atomically (temp file + rename, manifest last)."""
    assets_dir = Path(assets_dir)
    assets_dir.mkdir(parents=True, exist_ok=True)
    weights = assets_dir / f"{name}.safetensors"
    fd, tmp = tempfile.mkstemp(dir=assets_dir, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, weights)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = {**meta, "name": name, "file": weights.name, "sha256": sha256_file(weights),
            "bytes": weights.stat().st_size, "torch_version": torch.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_bytes(assets_dir / f"{name}.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta


__all__ = ["ASSETS_DIR", "MODELS", "ZooError", "load", "load_state", "manifest", "sha256_file", "write_asset"]
