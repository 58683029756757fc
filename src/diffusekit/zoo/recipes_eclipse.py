"""Zoo recipe ``captions_eclipse``: λ-ECLIPSE prior + unCLIP-style decoder on the captioned digits (issue 17).

* Decoder (``methods.eclipse_decoder``): ``EmbeddingConditionedUNet`` with the ``captions_unet`` UNet (``T2I_NET``,
  context width 64) warm-started from that asset's weights (its cross-attention now reads 4 tokens projected from
  the frozen ``captions_clip`` image embedding), eps prediction on the linear VP schedule, embedding dropout 0.1.
* Prior (``methods.eclipse``): ``EclipsePrior`` (3 blocks, width 64) trained with the ECLIPSE loss at λ = 0.2 on
  ``methods.eclipse_data.eclipse_pairs`` of the captioned train split.

``load_captions_eclipse`` returns an ``EclipsePipeline``: ``personalize(prompt, subject_images, num=, guidance=,
seed=)`` -> images.
"""

from __future__ import annotations

import time

import torch

__all__ = ["DECODER_TRAIN", "PRIOR_TRAIN", "ECLIPSE_BUDGETS", "EclipsePipeline", "train_eclipse_prior",
           "train_eclipse_decoder", "build_captions_eclipse", "load_captions_eclipse", "prompt_tokens"]

PRIOR_NET = {"width": 64, "depth": 3, "num_heads": 4, "mlp_ratio": 2.0}
PRIOR_TRAIN = {"steps": 1500, "batch_size": 128, "lr": 1e-3, "warmup_steps": 50, "ema_decay": None, "seed": 0,
               "weight_decay": 0.0}
DECODER_TRAIN = {"steps": 1500, "batch_size": 32, "lr": 5e-4, "warmup_steps": 50, "ema_decay": 0.995, "seed": 0}
DECODER_NUM_TOKENS = 4
LAMBDA = 0.2
ECLIPSE_BUDGETS = {"full": {"prior_steps": PRIOR_TRAIN["steps"], "decoder_steps": DECODER_TRAIN["steps"],
                            "train_n": 10_000, "eval_n": 200},
                   "quick": {"prior_steps": 3, "decoder_steps": 3, "train_n": 256, "eval_n": 8}}


def prompt_tokens(tokenizer, prompts: list[str], max_len: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and mask of prompts; ValueError naming the first word outside the caption vocabulary."""
    import re

    for p in prompts:
        unknown = [w for w in re.findall(r"[a-z0-9]+", p.lower()) if w not in tokenizer.stoi]
        if unknown:
            raise ValueError(f"word {unknown[0]!r} is not in the caption vocabulary "
                             f"({' '.join(tokenizer.words)})")
    return tokenizer.encode(prompts, max_len=max_len)


def train_eclipse_prior(clip, pairs: dict, *, lam: float = LAMBDA, steps: int = PRIOR_TRAIN["steps"],
                        batch_size: int = PRIOR_TRAIN["batch_size"], seed: int = 0, progress: bool = False,
                        net: dict | None = None):
    """Train an ``EclipsePrior`` with the ECLIPSE loss at ``lam`` on ``pairs`` (``eclipse_pairs``) through the
    ``Trainer`` (AdamW, warm-up, grad clip 1). Returns (prior in eval mode, history with ``seconds``)."""
    from ..methods.eclipse import EclipsePrior, EclipsePriorLoss
    from ..training.trainer import TrainConfig, Trainer

    torch.manual_seed(seed)
    prior = EclipsePrior(text_width=clip.text_encoder.width, embed_dim=clip.config["embed_dim"],
                         **(net or PRIOR_NET))
    config = TrainConfig(**{**PRIOR_TRAIN, "steps": steps, "batch_size": min(batch_size, len(pairs["z_img"])),
                            "seed": seed}, log_every=100, progress=progress)
    data = tuple(pairs[k] for k in ("tokens", "mask", "slots", "subjects", "z_img", "z_txt"))
    history = Trainer(prior, EclipsePriorLoss(clip, lam), data, config).fit()
    return prior.eval().requires_grad_(False), history


def decoder_unet_config(context_dim: int = 64) -> dict:
    """The decoder's UNet: ``recipes_t2i.T2I_NET`` with ``context_dim`` (so ``captions_unet`` weights load)."""
    from .recipes_t2i import T2I_NET

    return {**T2I_NET, "context_dim": context_dim}


def train_eclipse_decoder(images: torch.Tensor, z_img: torch.Tensor, *, steps: int = DECODER_TRAIN["steps"],
                          warm_start: dict | None = None, progress: bool = False, embed_dim: int = 64):
    """Train the unCLIP-style decoder on (images, frozen CLIP image embeddings) with ``EmbeddingDiffusionLoss``
    (embedding dropout 0.1); ``warm_start`` is a UNet state dict (``captions_unet``'s net) loaded before training.
    Returns (trainer, loss, history)."""
    from ..core.schedules import schedule_from_config
    from ..methods.eclipse_decoder import EmbeddingConditionedUNet, EmbeddingDiffusionLoss
    from ..training.trainer import TrainConfig, Trainer
    from .recipes_t2i import T2I_SCHEDULE

    torch.manual_seed(DECODER_TRAIN["seed"])
    net = EmbeddingConditionedUNet(decoder_unet_config(), embed_dim, DECODER_NUM_TOKENS)
    if warm_start is not None:
        net.unet.load_state_dict(warm_start)
    loss = EmbeddingDiffusionLoss(schedule_from_config(T2I_SCHEDULE), "eps", embedding_dropout=0.1)
    config = TrainConfig(**{**DECODER_TRAIN, "steps": steps}, log_every=100, progress=progress)
    trainer = Trainer(net, loss, (images, z_img), config)
    return trainer, loss, trainer.fit()


class EclipsePipeline:
    """λ-ECLIPSE at inference (Patel et al. 2024, arXiv 2402.05195): frozen CLIP, prior, unCLIP decoder.

    ``embed(prompts, subjects)`` runs the prior once (no diffusion); ``personalize`` decodes the embedding with CFG.
    Attributes: ``clip`` (with ``tokenizer``), ``prior`` (``EclipsePrior``), ``decoder`` (a ``NetworkDenoiser`` of
    the ``EmbeddingConditionedUNet``), ``meta``.
    """

    def __init__(self, clip, prior, decoder, meta: dict | None = None):
        self.clip, self.prior, self.decoder, self.meta = clip, prior, decoder, dict(meta or {})
        self.tokenizer = clip.tokenizer

    def num_subject_words(self, prompt: str) -> int:
        """How many subject (digit) words the prompt has: the number of subject images it needs."""
        from ..methods.eclipse import subject_slots

        tokens, _ = prompt_tokens(self.tokenizer, [prompt])
        return int((subject_slots(tokens, self.tokenizer) >= 0).sum())

    @torch.no_grad()
    def embed(self, prompts: list[str], subject_images: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted CLIP image embeddings (B, E). ``subject_images`` (B, S, 3, H, W) in [-1, 1] replace the S digit
        words of each prompt (in reading order); None keeps the words (plain text prior)."""
        from ..methods.eclipse import subject_slots

        tokens, mask = prompt_tokens(self.tokenizer, list(prompts))
        if subject_images is None:
            return self.prior.embed(self.clip, tokens, mask)
        b, s = subject_images.shape[:2]
        slots = subject_slots(tokens, self.tokenizer)
        counts = (slots >= 0).sum(1)
        if b != len(prompts) or bool((counts != s).any()):
            raise ValueError(f"each prompt needs exactly as many subject images as digit words: got {s} image(s) for "
                             f"prompts with {counts.tolist()} digit word(s)")
        z_subjects = self.clip.encode_image(subject_images.flatten(0, 1)).view(b, s, -1)
        return self.prior.embed(self.clip, tokens, mask, z_subjects, slots)

    def decode(self, z: torch.Tensor, *, guidance: float = 3.0, steps: int = 20, seed: int = 0) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] from embeddings z (B, E) (``decode_embeddings``)."""
        from ..methods.eclipse_decoder import decode_embeddings

        return decode_embeddings(self.decoder, z, guidance=guidance, steps=steps, seed=seed)

    def personalize(self, prompt: str, subject_images: torch.Tensor, *, num: int = 4, guidance: float = 3.0,
                    steps: int = 20, seed: int = 0) -> torch.Tensor:
        """``num`` images of ``prompt`` with its digit words bound to ``subject_images`` (S, 3, H, W): one prior pass,
        then the decoder from ``num`` noise draws (seed ``seed``)."""
        z = self.embed([prompt], subject_images[None])
        return self.decode(z.expand(num, -1).contiguous(), guidance=guidance, steps=steps, seed=seed)


def build_captions_eclipse(budget: dict, assets_dir, progress: bool) -> dict:
    """Train the decoder (warm start: ``captions_unet``) and the λ = 0.2 prior; evaluate; write the asset."""
    from ..core import NetworkDenoiser
    from ..data.captioned import make_captioned_digits
    from ..methods.eclipse_data import eclipse_pairs
    from . import load, write_asset
    from .recipes_t2i import T2I_SCHEDULE

    b = ECLIPSE_BUDGETS[budget.get("kind", "full")]
    clip, t2i = load("captions_clip", assets_dir=assets_dir), load("captions_unet", assets_dir=assets_dir)
    data = make_captioned_digits("train", n=b["train_n"])
    t0 = time.perf_counter()
    pairs = eclipse_pairs(data, clip, seed=0)
    pair_seconds = time.perf_counter() - t0
    prior, prior_history = train_eclipse_prior(clip, pairs, steps=b["prior_steps"], progress=progress)
    trainer, loss, dec_history = train_eclipse_decoder(data.images, pairs["z_img"], steps=b["decoder_steps"],
                                                       warm_start=t2i.net.state_dict(), progress=progress)
    decoder_net = trainer.ema_model.eval()
    pipeline = EclipsePipeline(clip, prior, NetworkDenoiser(decoder_net, loss.schedule, "eps"))
    from ..methods.eclipse_eval import evaluate_personalization  # evaluation shared with the bench

    metrics = evaluate_personalization(pipeline, load("captions_judge", assets_dir=assets_dir), n=b["eval_n"])
    state = {**{f"prior.{k}": v for k, v in prior.state_dict().items()},
             **{f"decoder.{k}": v for k, v in decoder_net.state_dict().items()}}
    meta = {"kind": "eclipse", "net": {"prior": prior.config, "decoder": decoder_net.config},
            "schedule": T2I_SCHEDULE, "loss": {"prediction": "eps", "lambda": LAMBDA,
                                                         "embedding_dropout": loss.embedding_dropout},
            "training": {"prior": {**PRIOR_TRAIN, "steps": b["prior_steps"]},
                         "decoder": {**DECODER_TRAIN, "steps": b["decoder_steps"], "warm_start": "zoo:captions_unet"},
                         "data": {"split": "train", "n": b["train_n"]}, "clip": "zoo:captions_clip"},
            "training_seconds": pair_seconds + prior_history["seconds"] + dec_history["seconds"],
            "prior_training_seconds": prior_history["seconds"], "decoder_training_seconds": dec_history["seconds"],
            "metrics": metrics, "loader": "diffusekit.zoo.recipes_eclipse:load_captions_eclipse"}
    return write_asset("captions_eclipse", state, meta, assets_dir)


def load_captions_eclipse(state: dict, meta: dict) -> EclipsePipeline:
    """Rebuild the ``EclipsePipeline`` (with ``zoo.load("captions_clip")``) from the asset's ``prior.`` and
    ``decoder.`` halves; both load strictly."""
    from ..core import NetworkDenoiser, schedule_from_config
    from ..methods.eclipse import EclipsePrior
    from ..methods.eclipse_decoder import EmbeddingConditionedUNet
    from . import load

    prior = EclipsePrior(**meta["net"]["prior"])
    prior.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("prior.")})
    dec = meta["net"]["decoder"]
    net = EmbeddingConditionedUNet(dec["unet"], dec["embed_dim"], dec["num_tokens"])
    net.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})
    decoder = NetworkDenoiser(net.eval(), schedule_from_config(meta["schedule"]), meta["loss"]["prediction"])
    return EclipsePipeline(load("captions_clip"), prior.eval().requires_grad_(False), decoder, meta)
