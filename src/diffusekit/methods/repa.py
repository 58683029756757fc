"""REPA: representation alignment for diffusion transformers (Yu et al., ICLR 2025, "Representation Alignment for
Generation: Training Diffusion Transformers Is Easier Than You Think", arXiv 2410.06940).

A diffusion transformer is trained with its usual denoising loss plus a regulariser that aligns the hidden
state after one of its blocks with the patch features of a frozen, pretrained encoder applied to the CLEAN image:

    L = L_diff + lambda * L_proj,        L_proj = -(1/N) sum_n cos(h_phi(h_n^(k)), y_n),        y = f(x0)    (eq. 8)

* L_diff is the SiT loss (Ma et al. 2024, arXiv 2401.08740): x_t = (1 - t) x0 + t eps, v = eps - x0,
  L_diff = mean (v_theta(x_t, t) - v)^2 with t ~ U[t_min, 1]; here :class:`~diffusekit.training.DiffusionLoss`
  on :class:`~diffusekit.core.FlowSchedule` with the ``velocity`` prediction (any per-example base loss works).
* h^(k) (B, N, D) is the token sequence after DiT block k (1-based), captured by a forward hook on
  ``net.blocks[k - 1]`` -- the DiT itself is not edited.
* h_phi is a small MLP D -> 2D -> 2D -> z_dim with SiLU (the reference uses 2048 hidden units), trained jointly
  with the DiT and dropped at inference.
* y (B, N, z_dim) are frozen encoder features of x0 pooled / resized to the DiT's token grid.

Learned vs frozen: the DiT and h_phi are learned, the encoder is frozen (``requires_grad_(False)``, eval mode,
features computed under ``torch.no_grad``).

Training with the generic :class:`~diffusekit.training.Trainer` (which optimises ``model.parameters()``):
the Trainer gets a :class:`REPAModel` (the DiT plus the projector), so the projector is optimised and EMA'd with the
net without any change to the Trainer; its forward is the DiT's forward. A Trainer checkpoint of a REPAModel holds
``net.*`` and ``projector.*`` weights under the model config ``{"name": "repa", ...}`` -- not a sampling checkpoint
(loading it for sampling fails with a one-line "unknown net name 'repa'"); :func:`save_repa_denoiser` writes the
DiT alone (raw and EMA) as an ordinary checkpoint that ``diffusekit sample`` loads.

Encoders (all map x0 (B, 1, 8, 8) in [-1, 1] to a feature map (B, C, H, W)): the zoo digits classifier's conv
features at 4 x 4 (:class:`ClassifierPatchEncoder`), the encoder of a small denoising autoencoder trained here
(:class:`DenoisingAutoencoder`), or the image tower of a CLIP model on digits rendered as RGB
(:class:`CLIPPatchEncoder`, only when ``diffusekit.nets.clip`` exists).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core import FlowSchedule
from ..training.losses import DiffusionLoss

__all__ = [
    "REPAProjector",
    "REPAModel",
    "REPALoss",
    "sit_loss",
    "capture_block_output",
    "features_on_token_grid",
    "negative_cosine_alignment",
    "ClassifierPatchEncoder",
    "DenoisingAutoencoder",
    "train_denoising_autoencoder",
    "CLIPPatchEncoder",
    "hidden_state",
    "linear_probe_accuracy",
    "save_repa_denoiser",
]


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / compiled wrapper (``.module`` / ``._orig_mod``)."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), nn.Module):
            model = getattr(model, attr)
    return model


def _check_depth(net: nn.Module, depth: int) -> int:
    blocks = getattr(net, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"REPA needs a transformer with a ModuleList `blocks` (a DiT); got {type(net).__name__}")
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= len(blocks):
        raise ValueError(f"encoder depth k must be an integer in [1, {len(blocks)}] (the DiT's blocks); got {depth!r}")
    return depth


@contextmanager
def capture_block_output(net: nn.Module, depth: int) -> Iterator[dict]:
    """Within the block, every forward of ``net`` stores h^(k), the output (B, N, D) of ``net.blocks[depth - 1]``
    (block k = ``depth``, 1-based, as in REPA's ``encoder_depth``), in the yielded dict under ``"h"``.

    A forward hook, removed on exit, so the network is not edited and its EMA / deep copies carry no hook.
    """
    _check_depth(net, depth)
    store: dict = {}

    def hook(_module, _inputs, output):
        store["h"] = output

    handle = net.blocks[depth - 1].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


class REPAProjector(nn.Sequential):
    """h_phi: Linear(D, P) SiLU Linear(P, P) SiLU Linear(P, z_dim), applied per token (REPA's ``build_mlp``,
    Yu et al. 2024, arXiv 2410.06940, Sec. 3.3; P = 2048 there, ``projector_dim`` = 2D by default here).

    Shapes: (B, N, D) -> (B, N, z_dim).
    """

    def __init__(self, hidden_size: int, z_dim: int, projector_dim: int | None = None):
        projector_dim = 2 * hidden_size if projector_dim is None else projector_dim
        for name, v in (("hidden_size", hidden_size), ("z_dim", z_dim), ("projector_dim", projector_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        super().__init__(nn.Linear(hidden_size, projector_dim), nn.SiLU(), nn.Linear(projector_dim, projector_dim),
                         nn.SiLU(), nn.Linear(projector_dim, z_dim))
        self.config = {"hidden_size": hidden_size, "z_dim": z_dim, "projector_dim": projector_dim}


class REPAModel(nn.Module):
    """What the Trainer optimises for REPA: the DiT ``net`` and the projector h_phi (Yu et al. 2024, arXiv
    2410.06940). ``forward(x, t, **cond)`` is ``net``'s forward, so a base diffusion loss trains it unchanged;
    :class:`REPALoss` reads h^(k) with a hook and applies ``projector``. After training keep ``model.net`` (the
    projector is dropped at inference).

    ``config``: ``{"name": "repa", "net": net.config, "num_classes": ..., "encoder_depth": k, "projector": ...}``
    (``num_classes`` is repeated so that class-label dropout finds it).
    """

    def __init__(self, net: nn.Module, encoder_depth: int, z_dim: int, *, projector_dim: int | None = None):
        super().__init__()
        _check_depth(net, encoder_depth)
        net_config = dict(getattr(net, "config", None) or {})
        hidden = net_config.get("hidden_size")
        if hidden is None:
            hidden = int(getattr(net.blocks[0].norm1, "normalized_shape", [0])[0])
        self.net = net
        self.encoder_depth = encoder_depth
        self.projector = REPAProjector(int(hidden), z_dim, projector_dim)
        self.config = {"name": "repa", "net": net_config, "num_classes": net_config.get("num_classes"),
                       "encoder_depth": encoder_depth, "projector": self.projector.config}

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return self.net(x, t, **cond)


def features_on_token_grid(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Encoder features (B, C, H, W) as patch targets y on the DiT's token grid (h, w): area-average pooling
    when (H, W) is a multiple of (h, w) (adaptive average pooling otherwise), bilinear interpolation when it is
    coarser, then tokens in row-major order (the DiT's patchify order). Returns (B, h * w, C).

    REPA resizes the image so the encoder's patch grid equals the DiT's (16 x 16 tokens for both); pooling the
    feature map is the same alignment for encoders with a fixed grid.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be a feature map (B, C, H, W); got shape {tuple(features.shape)}")
    h, w = grid
    if features.shape[-2:] != (h, w):
        if features.shape[-2] >= h and features.shape[-1] >= w:
            features = F.adaptive_avg_pool2d(features, (h, w))
        else:
            features = F.interpolate(features, size=(h, w), mode="bilinear", align_corners=False)
    return features.flatten(2).transpose(1, 2)


def negative_cosine_alignment(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_proj per example: -(1/N) sum_n cos(projected_n, target_n) (REPA eq. 8, arXiv 2410.06940).

    Shapes: (B, N, z), (B, N, z) -> (B,), values in [-1, 1]. Both sides are L2-normalised per token
    (``F.normalize``, eps 1e-12, as the reference does), so a zero target token contributes 0.
    """
    if projected.shape != target.shape:
        raise ValueError(f"projected {tuple(projected.shape)} and target {tuple(target.shape)} must match")
    cos = (F.normalize(projected, dim=-1) * F.normalize(target, dim=-1)).sum(-1)
    return -cos.mean(-1)


def sit_loss(label_dropout: float = 0.1, *, t_min: float = 1e-3) -> DiffusionLoss:
    """The SiT base loss (Ma et al. 2024, arXiv 2401.08740; REPA's ``SILoss`` with the linear path):
    x_t = (1 - t) x0 + t eps, target v = eps - x0, L_diff = mean_j (v_theta - v)_j^2, t ~ U[t_min, 1],
    class labels dropped to the null class with probability ``label_dropout`` (for CFG)."""
    return DiffusionLoss(FlowSchedule(t_min=t_min), "velocity", label_dropout=label_dropout)


class REPALoss:
    """Per-example REPA loss for the Trainer: ``loss(model, batch, generator) -> (B,)`` with ``model`` a
    :class:`REPAModel` (or a DDP wrapper of one) and batch = (x0,) or (x0, labels):

        L_i = L_diff,i + lambda * L_proj,i,     L_proj,i = -(1/N) sum_n cos(h_phi(h_i,n^(k)), y_i,n),   y = f(x0_i)

    (Yu et al. 2024, arXiv 2410.06940, eq. 8). ``base_loss(model, batch, generator) -> (B,)`` is the diffusion loss
    (default :func:`sit_loss`); it draws all the randomness, so a REPA run and a baseline run with the same Trainer
    seed see the same t, noise and label dropout. ``encoder(x0) -> (B, C, H, W)`` is frozen here
    (``requires_grad_(False)``, eval mode). ``normalize_targets``: ``"layer"`` applies a parameter-free layer norm
    over each target token's channels (REPA aligns DINOv2's normalised patch tokens), ``"none"`` keeps the raw
    features. ``weight`` is lambda; lambda = 0 returns exactly the base loss (no hook, no encoder call).
    ``last`` holds the batch means of the two terms after each call (``{"diffusion", "proj"}``) for logging.
    """

    def __init__(self, encoder: nn.Module, *, weight: float = 0.5, base_loss: Callable | None = None,
                 normalize_targets: str = "layer"):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"REPA weight lambda must be a finite number >= 0; got {weight!r}")
        if normalize_targets not in ("layer", "none"):
            raise ValueError(f"normalize_targets must be 'layer' or 'none'; got {normalize_targets!r}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.weight = float(weight)
        self.base_loss = sit_loss() if base_loss is None else base_loss
        self.normalize_targets = normalize_targets
        self.last: dict[str, float] = {}

    @torch.no_grad()
    def targets(self, x0: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """y = f(x0) on the token grid, (B, N, C) (see :func:`features_on_token_grid`), normalised per token."""
        y = features_on_token_grid(self.encoder(x0).float(), grid)
        if self.normalize_targets == "layer":
            y = F.layer_norm(y, y.shape[-1:])
        return y

    def __call__(self, model: nn.Module, batch, generator=None) -> torch.Tensor:
        if self.weight == 0.0:
            return self.base_loss(model, batch, generator)
        repa = _unwrap(model)
        if not isinstance(repa, REPAModel):
            raise ValueError("REPALoss with lambda > 0 trains a REPAModel (DiT + projector), "
                             f"got {type(repa).__name__}")
        with capture_block_output(repa.net, repa.encoder_depth) as store:
            diffusion = self.base_loss(model, batch, generator)
        h = store["h"]  # (B, N, D)
        side = math.isqrt(h.shape[1])
        grid = getattr(repa.net, "grid_size", None) or (side, side)
        grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        y = self.targets(batch[0], grid).to(h.device)
        proj = negative_cosine_alignment(repa.projector(h).float(), y)
        self.last = {"diffusion": float(diffusion.detach().mean()), "proj": float(proj.detach().mean())}
        return diffusion + self.weight * proj.to(diffusion.dtype)


# ----------------------------------------------------------------------------------------------- encoders


class ClassifierPatchEncoder(nn.Module):
    """Frozen patch features of the zoo digits classifier (``metrics.digits.DigitsClassifier``): its conv body up to
    the SiLU after the fourth 3 x 3 conv, the (B, 2c, 4, 4) map before the second max-pool -- one 2c-vector per
    2 x 2 pixel patch of an 8 x 8 digit, the token grid of a patch-2 DiT. x: (B, 1, 8, 8) in [-1, 1]."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.trunk = classifier.body[:9]
        self.feature_dim = int(classifier.body[7].out_channels)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x.to(self.trunk[0].weight.dtype))


class DenoisingAutoencoder(nn.Module):
    """A small convolutional denoising autoencoder on 8 x 8 digits (Vincent et al. 2008): encoder
    conv3x3(1, c) SiLU conv3x3/2(c, c) SiLU conv3x3(c, z) -> features (B, z, 4, 4); decoder
    convT4x4/2(z, c) SiLU conv3x3(c, 1). Trained by :func:`train_denoising_autoencoder` to reconstruct x0 from
    x0 + sigma * noise; ``forward`` returns the encoder's feature map (the frozen REPA target)."""

    def __init__(self, channels: int = 32, z_dim: int = 32):
        super().__init__()
        c = channels
        self.encoder = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, stride=2, padding=1),
                                     nn.SiLU(), nn.Conv2d(c, z_dim, 3, padding=1))
        self.decoder = nn.Sequential(nn.ConvTranspose2d(z_dim, c, 4, stride=2, padding=1), nn.SiLU(),
                                     nn.Conv2d(c, 1, 3, padding=1))
        self.feature_dim = z_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def train_denoising_autoencoder(x: torch.Tensor, *, steps: int = 1500, noise_std: float = 0.5, seed: int = 0,
                                batch_size: int = 128, lr: float = 2e-3, channels: int = 32,
                                z_dim: int = 32) -> DenoisingAutoencoder:
    """Train :class:`DenoisingAutoencoder` on ``x`` (N, 1, 8, 8): Adam on mean (dec(enc(x + s n)) - x)^2 with
    s = ``noise_std``; deterministic given ``seed`` (the global RNG is left untouched). Returns it frozen, in eval
    mode."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dae = DenoisingAutoencoder(channels, z_dim)
    opt = torch.optim.Adam(dae.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=g)
        xb = x[idx]
        loss = (dae.reconstruct(xb + noise_std * torch.randn(xb.shape, generator=g)) - xb).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return dae.eval().requires_grad_(False)


class CLIPPatchEncoder(nn.Module):
    """Frozen image-tower patch features of a small CLIP (``diffusekit.nets.clip.CLIPModel.image_patch_features``,
    final-LayerNorm patch tokens) on grey 8 x 8 digits drawn the way ``data.captioned`` draws a centred thin white
    digit: intensity (x + 1) / 2 upscaled (bilinear) to S / 2 pixels in the centre of a black S x S RGB canvas,
    back to [-1, 1]. Returned: the tokens of the patches that cover the digit, as a (B, D, g, g) map (S = 24,
    patch 4: the 4 x 4 patches over pixels 4..19, the token grid of a patch-2 DiT on 8 x 8)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        size, patch = int(clip.image_size), int(clip.patch_size)
        self.digit_size, self.offset = size // 2, size // 4
        self.first = self.offset // patch
        self.last = -(-(self.offset + self.digit_size) // patch)  # ceil: the patch after the digit's last pixel
        self.grid = size // patch
        self.feature_dim = int(clip.config["image_width"])

    def render(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) in [-1, 1] -> (B, 3, S, S) in [-1, 1]: a white digit centred on black."""
        ink = F.interpolate((x + 1) / 2, size=(self.digit_size,) * 2, mode="bilinear", align_corners=False)
        size = self.clip.image_size
        canvas = ink.new_zeros(x.shape[0], 3, size, size)
        o, d = self.offset, self.digit_size
        canvas[:, :, o:o + d, o:o + d] = ink.clamp(0, 1)
        return canvas * 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.clip.image_patch_features(self.render(x))  # (B, grid^2, D), row-major
        b, _, d = tokens.shape
        fmap = tokens.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        return fmap[:, :, self.first:self.last, self.first:self.last]


# ------------------------------------------------------------------------------------------- linear probe


@torch.no_grad()
def hidden_state(net: nn.Module, x0: torch.Tensor, depth: int, t: float, schedule=None, *, seed: int = 0,
                 null_label: bool = True, batch_size: int = 512) -> torch.Tensor:
    """Mean-pooled h^(k) (B, D) of ``net`` at the noisy input x_t = alpha_t x0 + sigma_t eps (``schedule``,
    default FlowSchedule; eps from ``seed``). A class-conditional net gets the null class (``num_classes``), so
    the probe reads what the tokens hold, not the label embedding; ``null_label=False`` passes no labels."""
    schedule = FlowSchedule() if schedule is None else schedule
    was_training = net.training
    net.eval()
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g)
    num_classes = (getattr(net, "config", None) or {}).get("num_classes")
    out = []
    try:
        with capture_block_output(net, depth) as store:
            for s in range(0, x0.shape[0], batch_size):
                xb = x0[s:s + batch_size]
                tb = torch.full((xb.shape[0],), float(t), dtype=torch.float64)
                x_t = schedule.add_noise(xb, tb, eps[s:s + batch_size]).to(xb.dtype)
                cond = {}
                if num_classes is not None and null_label:
                    cond["class_labels"] = torch.full((xb.shape[0],), num_classes, dtype=torch.long)
                net(x_t, schedule.network_time(tb).to(xb.dtype), **cond)
                out.append(store["h"].mean(1).float())
    finally:
        net.train(was_training)
    return torch.cat(out)


def linear_probe_accuracy(net: nn.Module, depth: int, train: tuple[torch.Tensor, torch.Tensor],
                          test: tuple[torch.Tensor, torch.Tensor], *, t: float = 0.5, schedule=None, seed: int = 0,
                          max_iter: int = 2000) -> float:
    """Test accuracy of a multinomial logistic regression (sklearn, standardised inputs) fitted on the mean-pooled
    h^(k) of the train images at noise level ``t`` (REPA Sec. 3.1 / Fig. 2 probes DiT/SiT features this way).
    ``train`` / ``test``: (x0 (N, 1, 8, 8), labels (N,))."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f_train = hidden_state(net, train[0], depth, t, schedule, seed=seed).numpy()
    f_test = hidden_state(net, test[0], depth, t, schedule, seed=seed + 1).numpy()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    clf.fit(f_train, train[1].numpy())
    return float(clf.score(f_test, test[1].numpy()))


# --------------------------------------------------------------------------------------------- checkpoint


def save_repa_denoiser(path_dir: str | Path, model: REPAModel, ema_model: REPAModel | None = None, *,
                       step: int = 0, extra_config: dict | None = None) -> Path:
    """Write the DiT of a REPA run (raw and, if given, EMA weights; the projector dropped) as an ordinary
    checkpoint (``training.checkpoint.save_checkpoint``, model config = the DiT's), loadable by
    ``diffusekit sample`` / ``load_inference_net``. ``extra_config``: e.g. ``{"schedule": ..., "loss": ...}``."""
    from ..training.checkpoint import save_checkpoint

    return save_checkpoint(path_dir, model=_unwrap(model).net,
                           ema_model=_unwrap(ema_model).net if ema_model is not None else None, optimizer=None,
                           step=step, extra_config=extra_config)
