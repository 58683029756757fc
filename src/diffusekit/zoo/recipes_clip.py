"""Recipe of the ``captions_clip`` zoo asset: a small CLIP (Radford et al. 2021, arXiv 2103.00020) on the captioned
compositional digits (:mod:`diffusekit.data.captioned`), with its evaluation.

The model (:class:`diffusekit.nets.clip.CLIPModel`): ViT image tower (24 x 24 RGB, 4 x 4 patches -> 36 tokens,
width 64, depth 3, MLP ratio 2), caption text encoder (width 64, depth 2), 64-d joint embedding. Sized so the whole
recipe trains in a few minutes on 2 CPU cores: at batch 128 the image tower is ~2/3 of a step's cost.
"""

from __future__ import annotations

import torch

from ..data.captioned import make_captioned_digits
from ..nets.clip import ZERO_SHOT_ATTRIBUTES, retrieval_recall, train_clip, zero_shot_accuracy
from ..nets.text import CaptionTokenizer

CLIP_DATA = {"train_n": 10_000, "size": 24, "seed": 0, "eval_n": {"test": 2_000, "heldout": 1_000}}
CLIP_MODEL = {"image_size": 24, "embed_dim": 64, "patch_size": 4, "image_width": 64, "image_depth": 3,
              "image_heads": 4, "image_mlp_ratio": 2.0,
              "text": {"width": 64, "depth": 2, "num_heads": 4, "max_len": 32}}
CLIP_TRAIN = {"steps": 1500, "batch_size": 128, "lr": 2e-3, "seed": 0, "weight_decay": 0.05, "warmup_steps": 100,
              "recaption": True}


def clip_model_config(tokenizer: CaptionTokenizer) -> dict:
    """:data:`CLIP_MODEL` with the tokenizer's vocabulary size filled in."""
    return {**CLIP_MODEL, "text": {**CLIP_MODEL["text"], "vocab_size": tokenizer.vocab_size}}


def evaluate_clip(model, tokenizer: CaptionTokenizer, eval_n: dict | None = None, size: int = 24, seed: int = 0
                  ) -> dict:
    """Zero-shot accuracy (digit, colour, thickness of the first digit) and retrieval recall@1/5 (galleries of 100)
    on the ``test`` split (seen attribute combinations, unseen digit images) and the ``heldout`` split (first digit
    in a (digit, colour) pair never seen in training)."""
    eval_n = eval_n or CLIP_DATA["eval_n"]
    metrics = {}
    for split, n in eval_n.items():
        data = make_captioned_digits(split, n=n, size=size, seed=seed)
        m = {f"zero_shot_{a}": zero_shot_accuracy(model, tokenizer, data, a) for a in ZERO_SHOT_ATTRIBUTES}
        m.update(retrieval_recall(model, tokenizer, data, k=(1, 5), batch=100))
        metrics[split] = {**m, "n": n}
    return metrics


def train_captions_clip(steps: int | None = None, train_n: int | None = None, progress: bool = False,
                        eval_n: dict | None = None):
    """Train and evaluate the ``captions_clip`` recipe; returns (model, tokenizer, history, metrics)."""
    tokenizer = CaptionTokenizer()
    data = make_captioned_digits("train", n=train_n or CLIP_DATA["train_n"], size=CLIP_DATA["size"],
                                 seed=CLIP_DATA["seed"])
    train = {**CLIP_TRAIN, "steps": steps or CLIP_TRAIN["steps"]}
    model, history = train_clip(data, train["steps"], train["batch_size"], train["lr"], train["seed"], progress,
                                model_config=clip_model_config(tokenizer), weight_decay=train["weight_decay"],
                                warmup_steps=train["warmup_steps"], recaption=train["recaption"], tokenizer=tokenizer)
    history["train"] = train
    metrics = evaluate_clip(model, tokenizer, eval_n, size=CLIP_DATA["size"])
    return model, tokenizer, history, metrics


# ``diffusekit zoo build`` budgets (merged into ``build.BUDGETS``): the shipped asset and the --quick smoke test.
CLIP_BUDGETS = {"full": {"clip_steps": CLIP_TRAIN["steps"], "clip_train_n": CLIP_DATA["train_n"],
                         "clip_eval_n": CLIP_DATA["eval_n"]},
                "quick": {"clip_steps": 4, "clip_train_n": 256, "clip_eval_n": {"test": 100, "heldout": 100}}}


def build_captions_clip(budget: dict, assets_dir, progress: bool) -> dict:
    """Train the ``captions_clip`` asset (:func:`train_captions_clip`) and write it with its manifest: the model
    config, the tokenizer config, training wall/CPU seconds and the test / held-out metrics."""
    from . import write_asset

    model, tokenizer, history, metrics = train_captions_clip(budget["clip_steps"], budget["clip_train_n"], progress,
                                                             budget["clip_eval_n"])
    meta = {"kind": "clip", "net": model.config, "tokenizer": tokenizer.config(),
            "data": {"name": "captioned_digits", "split": "train", "n": budget["clip_train_n"],
                     "size": CLIP_DATA["size"], "seed": CLIP_DATA["seed"]},
            "training": history["train"], "training_seconds": history["seconds"],
            "training_cpu_seconds": history["cpu_seconds"], "torch_threads": torch.get_num_threads(),
            "final_loss": sum(history["loss"][-50:]) / len(history["loss"][-50:]),
            "final_logit_scale": history["logit_scale"][-1], "metrics": metrics}
    return write_asset("captions_clip", model.state_dict(), meta, assets_dir)


def load_clip(state: dict, meta: dict):
    """The zoo's ``CLIPModel`` in eval mode, with its ``CaptionTokenizer`` attached as ``model.tokenizer``."""
    from ..nets.clip import CLIPModel

    model = CLIPModel(**meta["net"])
    model.load_state_dict(state)
    model.tokenizer = CaptionTokenizer(**meta["tokenizer"])
    return model.eval()
