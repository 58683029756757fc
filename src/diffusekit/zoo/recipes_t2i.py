"""Text-to-image recipe on the captioned digits, and the attribute classifier that judges it.

* ``captions_unet``: a cross-attention UNet (``T2I_NET``) on 24 x 24 RGB captioned digits (train split), eps
  prediction on the discrete linear VP schedule, caption dropout 0.1 (``methods.text_conditioning``), its context
  the hidden states of every token under a frozen ``nets.text.TextEncoder`` at its seeded random initialisation
  (``frozen_text_encoder``; shipped inside the asset). Not the ``captions_clip`` text tower: that asset did not
  exist when this model had to be trained, and the two were not compared.
* ``AttributeClassifier``: a CNN trained separately (on the same train split, never on generated images) that
  reads the layout (one centred digit, or a left and a right digit) and each slot's digit, colour and stroke
  thickness; ``attribute_accuracy`` scores generated images against the attributes their captions asked for.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.captioned import COLOURS, POSITIONS, THICKNESSES, CaptionedDigits

__all__ = ["T2I_NET", "T2I_SCHEDULE", "T2I_LOSS", "T2I_TRAIN", "T2I_DATA_N", "ATTRIBUTES", "AttributeClassifier",
           "train_attribute_classifier", "predict_attributes", "attribute_accuracy"]

# Sized for CPU: per training step at batch 32 (1 thread, CPU seconds) base 32 / mults (1, 2, 2) costs 0.26 s,
# base 16 / mults (1, 2, 4) 0.13 s; self- and cross-attention at 6 x 6 and in the middle.
T2I_NET = {"name": "unet", "in_channels": 3, "base_channels": 16, "channel_mult": [1, 2, 4], "num_res_blocks": 1,
           "attention_resolutions": [6], "num_heads": 4, "image_size": 24}  # + context_dim of the text encoder
T2I_SCHEDULE = {"name": "vp_discrete", "beta_schedule": "linear", "num_train_timesteps": 1000}
T2I_LOSS = {"prediction": "eps", "weighting": "uniform", "caption_dropout": 0.1}
T2I_TRAIN = {"steps": 7000, "batch_size": 32, "lr": 2e-3, "warmup_steps": 100, "ema_decay": 0.995, "seed": 0}
T2I_DATA_N = 10_000

ATTRIBUTES = ("digit", "colour", "thickness", "layout")
_HEADS = {"layout": 2, "digit_0": 10, "colour_0": len(COLOURS), "thickness_0": len(THICKNESSES),
          "digit_1": 10, "colour_1": len(COLOURS), "thickness_1": len(THICKNESSES)}
_LEFT, _RIGHT, _CENTRE = (POSITIONS.index(p) for p in ("left", "right", "centre"))


class AttributeClassifier(nn.Module):
    """Two CNNs over (B, 3, S, S) images in [-1, 1], one linear head per attribute slot.

    Shape body (on the colour-free intensity ``max_c x_c``, so digit and stroke reading cannot lean on colour and
    carries over to held-out digit/colour pairs): [conv3x3 -> GroupNorm -> SiLU] x 2 at S, S/2 (stride-2 entry) and
    S/4, flatten (keeps where a digit is), Linear -> SiLU -> dropout; heads ``layout`` (0 = one centred digit,
    1 = a left and a right digit) and per slot k (0 = the centred or left digit, 1 = the right one) ``digit_k``,
    ``thickness_k``. Colour body (RGB, two stride-2 convs, flatten, Linear): heads ``colour_k``.
    ``forward(x) -> dict[head, logits (B, classes)]``.
    """

    def __init__(self, image_size: int = 24, channels: int = 32, feature_dim: int = 128, dropout: float = 0.1):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4; got {image_size}")
        self.config = {"image_size": image_size, "channels": channels, "feature_dim": feature_dim, "dropout": dropout}
        c, side = channels, image_size // 4

        def block(cin, cout, stride=1):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]

        self.shape_body = nn.Sequential(*block(1, c), *block(c, c), *block(c, 2 * c, 2), *block(2 * c, 2 * c),
                                        *block(2 * c, 2 * c, 2), *block(2 * c, 2 * c), nn.Flatten(),
                                        nn.Linear(2 * c * side**2, feature_dim), nn.SiLU(), nn.Dropout(dropout))
        self.colour_body = nn.Sequential(*block(3, 16, 2), *block(16, 16, 2), nn.Flatten(),
                                         nn.Linear(16 * side**2, 64), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(64 if k.startswith("colour") else feature_dim, n)
                                    for k, n in _HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shape = self.shape_body(x.amax(1, keepdim=True))
        colour = self.colour_body(x)
        return {k: head(colour if k.startswith("colour") else shape) for k, head in self.heads.items()}


def _targets(attributes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Head targets of dataset attributes (-1 where a slot is empty: ignored by the loss)."""
    two = attributes["num_digits"] == 2
    out = {"layout": two.long()}
    for k in (0, 1):
        for a in ("digit", "colour", "thickness"):
            out[f"{a}_{k}"] = attributes[f"{a}_{k}"]
    # slot 1 exists only in two-digit images; slot 0 is then the left digit (position_0 = left)
    if bool((attributes["position_0"][two] != _LEFT).any()):
        raise ValueError("two-digit images must have slot 0 on the left")
    return out


def train_attribute_classifier(data: CaptionedDigits, *, steps: int = 1500, batch_size: int = 128, lr: float = 2e-3,
                               seed: int = 0, progress: bool = False, **net_kwargs) -> tuple[AttributeClassifier, dict]:
    """Train the judge on ``data`` (sum of the heads' cross-entropies, empty slots ignored; AdamW, cosine decay;
    random 1-pixel translations as augmentation). Returns (classifier in eval mode, history)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = AttributeClassifier(image_size=data.images.shape[-1], **net_kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    targets = _targets(data.attributes)
    n, losses, t0 = len(data), [], time.perf_counter()
    model.train()
    for _ in tqdm(range(steps), desc="attribute classifier", disable=not progress):
        idx = torch.randint(n, (batch_size,), generator=g)
        x = data.images[idx]
        shift = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(F.pad(x, (1, 1, 1, 1), value=-1.0), shifts=shift, dims=(2, 3))[..., 1:-1, 1:-1]
        logits = model(x)
        loss = sum(F.cross_entropy(logits[k], targets[k][idx], ignore_index=-1) for k in _HEADS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return model.eval(), {"loss": losses, "seconds": time.perf_counter() - t0, "steps": steps}


@torch.no_grad()
def predict_attributes(classifier: AttributeClassifier, images: torch.Tensor, batch: int = 500) -> dict:
    """Predicted attributes in the dataset's encoding: ``num_digits``, ``digit_k``, ``colour_k``, ``thickness_k``,
    ``position_k`` (slot 1 = -1 when one digit is predicted)."""
    logits = {k: [] for k in _HEADS}
    for i in range(0, len(images), batch):
        for k, v in classifier(images[i:i + batch]).items():
            logits[k].append(v)
    pred = {k: torch.cat(v).argmax(1) for k, v in logits.items()}
    two = pred["layout"] == 1
    out = {"num_digits": 1 + two.long(), "position_0": torch.where(two, _LEFT, _CENTRE),
           "position_1": torch.where(two, _RIGHT, -1)}
    for a in ("digit", "colour", "thickness"):
        out[f"{a}_0"] = pred[f"{a}_0"]
        out[f"{a}_1"] = torch.where(two, pred[f"{a}_1"], -1)
    return out


def attribute_accuracy(predicted: dict, requested: dict) -> dict:
    """Fraction of requested attributes the images show (per attribute over the requested digit slots; ``layout``
    per image: the number and placement of digits), and ``all_correct``: images whose layout and every slot's
    digit, colour and thickness are all right; ``pair_0``: images whose first (left or only) digit has the requested
    digit and colour (in the heldout split, always a held-out pair). ``requested``: the captions' attributes."""
    layout_ok = predicted["num_digits"] == requested["num_digits"]
    out, all_ok = {"layout": float(layout_ok.double().mean())}, layout_ok.clone()
    for a in ("digit", "colour", "thickness"):
        right, count = 0, 0
        for k in (0, 1):
            present = requested[f"{a}_{k}"] >= 0
            ok = (predicted[f"{a}_{k}"] == requested[f"{a}_{k}"]) & layout_ok
            right += int((ok & present).sum())
            count += int(present.sum())
            all_ok &= ok | ~present
        out[a] = right / max(count, 1)
    out["all_correct"] = float(all_ok.double().mean())
    # the first (left or only) digit's (digit, colour) pair: the held-out pair in every heldout-split caption
    pair_ok = layout_ok & (predicted["digit_0"] == requested["digit_0"])
    pair_ok &= predicted["colour_0"] == requested["colour_0"]
    out["pair_0"] = float(pair_ok.double().mean())
    return out


# --- the captions_unet recipe ------------------------------------------------------------------------------------

T2I_TEXT = {"width": 64, "depth": 2, "num_heads": 4, "max_len": 32, "seed": 0}
JUDGE_TRAIN = {"steps": 600, "batch_size": 64, "lr": 2e-3, "seed": 0}
EVAL_GUIDANCE = (1.0, 3.0)


def frozen_text_encoder(tokenizer, width: int = 64, depth: int = 2, num_heads: int = 4, max_len: int = 32,
                        seed: int = 0):
    """The recipe's frozen text encoder: a ``nets.text.TextEncoder`` at its seeded random initialisation (a closed
    caption vocabulary needs no language pretraining, only distinct token states; the weights ship in the asset)."""
    from ..nets.text import TextEncoder

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = TextEncoder(tokenizer.vocab_size, width=width, depth=depth, num_heads=num_heads, max_len=max_len)
    return encoder.eval().requires_grad_(False)


def train_captions_unet(*, steps: int | None = None, max_seconds: float | None = None, train_n: int = T2I_DATA_N,
                        progress: bool = False, out_dir=None):
    """Train the ``captions_unet`` recipe: ``T2I_NET`` + ``context_dim`` of the frozen text encoder on the captioned
    train split with ``TextDiffusionLoss`` (caption dropout 0.1). Returns (trainer, loss, history)."""
    from ..core.schedules import schedule_from_config
    from ..data.captioned import make_captioned_digits
    from ..methods.text_conditioning import TextDiffusionLoss
    from ..nets import build_net
    from ..nets.text import CaptionTokenizer
    from ..training.trainer import TrainConfig, Trainer

    tokenizer = CaptionTokenizer()
    encoder = frozen_text_encoder(tokenizer, **{k: v for k, v in T2I_TEXT.items()})
    data = make_captioned_digits("train", n=train_n)
    tokens, mask = tokenizer.encode(data.captions)
    train = {**T2I_TRAIN, **({"steps": steps} if steps else {})}
    config = TrainConfig(**train, log_every=50, progress=progress, max_seconds=max_seconds,
                         checkpoint_every=500 if out_dir else 0)
    torch.manual_seed(train["seed"])
    net = build_net({**T2I_NET, "context_dim": encoder.width})
    loss_config = {k: v for k, v in T2I_LOSS.items() if k != "caption_dropout"}
    loss = TextDiffusionLoss(schedule_from_config(T2I_SCHEDULE), encoder, tokenizer,
                             caption_dropout=T2I_LOSS["caption_dropout"], **loss_config)
    trainer = Trainer(net, loss, (data.images, tokens, mask), config, out_dir=out_dir,
                      extra_config={"schedule": T2I_SCHEDULE, "loss": T2I_LOSS, "text": T2I_TEXT})
    return trainer, loss, trainer.fit()


# --- zoo assets: build and load -----------------------------------------------------------------------------------

T2I_QUICK_BUDGET = {"captions_unet_steps": 4, "captions_judge_steps": 4, "captions_eval_n": 4, "captions_train_n": 256}


def _is_quick(budget: dict) -> bool:
    return "captions_unet_steps" in budget


def build_captions_judge(budget: dict, assets_dir, progress: bool) -> dict:
    """Train the attribute classifier (``JUDGE_TRAIN``) on the captioned train split; test / heldout accuracy."""
    from ..data.captioned import make_captioned_digits
    from . import write_asset

    quick = _is_quick(budget)
    data = make_captioned_digits("train", n=budget["captions_train_n"] if quick else None)
    train = {**JUDGE_TRAIN, **({"steps": budget["captions_judge_steps"]} if quick else {})}
    clf, history = train_attribute_classifier(data, progress=progress, **train)
    metrics = {}
    for split in ("test", "heldout"):
        d = make_captioned_digits(split, n=budget["captions_eval_n"] if quick else None)
        metrics[split] = {**attribute_accuracy(predict_attributes(clf, d.images), d.attributes), "n": len(d)}
    meta = {"kind": "attribute_classifier", "net": clf.config, "training": {**train, "data": "captioned train split"},
            "training_seconds": history["seconds"], "metrics": metrics}
    return write_asset("captions_judge", clf.state_dict(), meta, assets_dir)


def evaluate_captions_unet(denoiser, judge, *, n: int = 300, guidance=EVAL_GUIDANCE, steps: int = 10) -> dict:
    """Attribute accuracy (``attribute_accuracy`` by ``judge``) of one image per caption of ``n`` test-split captions
    (seen combinations) and ``n`` heldout-split captions, per guidance scale, default sampler at ``steps`` steps."""
    from ..data.captioned import make_captioned_digits
    from ..methods.text_conditioning import text_to_image

    metrics = {}
    for split, name in (("test", "seen"), ("heldout", "heldout")):
        data = make_captioned_digits(split, n=n, seed=1)
        for w in guidance:
            x = text_to_image(denoiser, data.captions, guidance=w, steps=steps, seed=0)
            metrics[f"{name}_guidance_{w:g}"] = attribute_accuracy(predict_attributes(judge, x), data.attributes)
    return metrics


def captions_unet_meta(trainer, loss, history, tokenizer, metrics: dict) -> dict:
    """The manifest of ``captions_unet``: a denoiser with a ``text`` entry (tokenizer and frozen encoder)."""
    return {"kind": "denoiser", "net": dict(trainer.model.config), "schedule": T2I_SCHEDULE,
            "loss": {k: v for k, v in T2I_LOSS.items()},
            "text": {"tokenizer": tokenizer.config(), "encoder": dict(loss.text_encoder.config),
                     "encoder_init_seed": T2I_TEXT["seed"], "frozen": True},
            "data": {"name": "captioned_digits", "split": "train", "n": T2I_DATA_N, "size": 24},
            "training": trainer.config.to_dict(), "training_seconds": history["seconds"],
            "training_steps": len(history["loss"]),
            "final_loss": sum(history["loss"][-100:]) / max(1, len(history["loss"][-100:])), "metrics": metrics}


def captions_unet_state(trainer, loss) -> dict:
    """One state dict for the asset: the EMA network under ``net.``, the frozen text encoder under ``text_encoder.``."""
    state = {f"net.{k}": v for k, v in trainer.ema_model.state_dict().items()}
    state.update({f"text_encoder.{k}": v for k, v in loss.text_encoder.state_dict().items()})
    return state


def build_captions_unet(budget: dict, assets_dir, progress: bool) -> dict:
    """Train ``captions_unet`` (``train_captions_unet``) and evaluate it with the zoo's ``captions_judge``."""
    from ..nets.text import CaptionTokenizer
    from . import load, write_asset

    quick = _is_quick(budget)
    trainer, loss, history = train_captions_unet(steps=budget["captions_unet_steps"] if quick else None,
                                                 train_n=budget["captions_train_n"] if quick else T2I_DATA_N,
                                                 progress=progress)
    denoiser = loss.text_denoiser(trainer.ema_model.eval())
    metrics = evaluate_captions_unet(denoiser, load("captions_judge", assets_dir=assets_dir),
                                     n=budget["captions_eval_n"] if quick else 300)
    meta = captions_unet_meta(trainer, loss, history, CaptionTokenizer(), metrics)
    return write_asset("captions_unet", captions_unet_state(trainer, loss), meta, assets_dir)


def load_zoo_text_model(state: dict, meta: dict):
    """Rebuild a zoo text-to-image asset: a ``TextConditionedDenoiser`` (EMA network, frozen text encoder, tokenizer)
    from the ``net.`` / ``text_encoder.`` halves of its state dict; both load strictly."""
    from ..core import schedule_from_config
    from ..methods.text_conditioning import TextConditionedDenoiser
    from ..nets import build_net
    from ..nets.text import CaptionTokenizer, TextEncoder

    net = build_net(meta["net"])
    net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    encoder_config = {k: v for k, v in meta["text"]["encoder"].items() if k != "name"}
    encoder = TextEncoder(**encoder_config)
    encoder.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")})
    return TextConditionedDenoiser(net.eval(), schedule_from_config(meta["schedule"]), meta["loss"]["prediction"],
                                   tokenizer=CaptionTokenizer(**meta["text"]["tokenizer"]), text_encoder=encoder)


def load_attribute_classifier(state: dict, meta: dict) -> AttributeClassifier:
    """Rebuild the zoo's ``captions_judge`` (eval mode)."""
    model = AttributeClassifier(**meta["net"])
    model.load_state_dict(state)
    return model.eval()
