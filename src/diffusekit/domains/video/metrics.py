"""Video metrics for moving-digit clips (N, T, 1, H, W) in [-1, 1] (the metric families of the survey, Melnik et al.
2024, arXiv 2405.03150, Sec. 7: frame quality, temporal consistency, and a Frechet video distance).

* **Frame features / labels**: each frame is cropped to the 8 x 8 window around its intensity centroid (rounded to
  whole pixels) and read by the frozen zoo ``digits_classifier`` (trained on 8 x 8 digits with +-1 px shifts). This
  needs ``digit_size == 8`` (the digits' native size); on real test clips it labels 93% of frames correctly.
* ``frame_fd``: the digits Frechet distance (Heusel et al. 2017, arXiv 1706.08500) between the crops of generated and
  real frames, in the classifier's penultimate features.
* ``identity_consistency``: the fraction of frames whose label equals the clip's majority label, and the fraction
  equal to the requested class (a digit that morphs into another one over the clip scores low on the first).
* ``motion_smoothness``: the mean centroid acceleration |c_{t+1} - 2 c_t + c_{t-1}| in pixels / frame^2 (0 for
  constant velocity; real clips are non-zero only at wall bounces).
* ``fvd``: Frechet video distance (Unterthiner et al. 2018, arXiv 1812.01717) computed with *our* video feature net
  (``VideoFeatureNet``, a small 3-D convolutional classifier of digit identity and motion direction trained on real
  clips) instead of I3D: the Frechet distance between Gaussians fitted to its penultimate features of generated and
  real clips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...metrics.digits import digits_features
from ...metrics.distances import frechet_distance

__all__ = ["frame_centroids", "centroid_crops", "frame_labels", "identity_consistency", "motion_smoothness",
           "frame_fd", "VideoFeatureNet", "train_video_feature_net", "video_features", "fvd", "video_report"]

CROP = 8


def _check_clips(videos: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(videos) or videos.ndim != 5 or videos.shape[2] != 1 or videos.shape[1] < 1:
        got = tuple(videos.shape) if torch.is_tensor(videos) else type(videos).__name__
        raise ValueError(f"videos must be grey clips (N, T, 1, H, W), got {got}")
    return videos.float()


def frame_centroids(videos: torch.Tensor) -> torch.Tensor:
    """Intensity centroids (N, T, 2) as (x right, y down) in pixels: c = sum_u w_u u / sum_u w_u with w = (x + 1) / 2
    (background -1 weighs 0); the canvas centre for an empty frame."""
    videos = _check_clips(videos)
    w = ((videos[:, :, 0] + 1) / 2).clamp(min=0)  # (N, T, H, W)
    h, wd = w.shape[-2:]
    ys = torch.arange(h, dtype=w.dtype) + 0.5
    xs = torch.arange(wd, dtype=w.dtype) + 0.5
    mass = w.sum((-1, -2))
    empty = mass < 1e-6
    cx = (w.sum(-2) * xs).sum(-1) / mass.clamp(min=1e-6)
    cy = (w.sum(-1) * ys).sum(-1) / mass.clamp(min=1e-6)
    cx = torch.where(empty, torch.full_like(cx, wd / 2), cx)
    cy = torch.where(empty, torch.full_like(cy, h / 2), cy)
    return torch.stack([cx, cy], dim=-1)


def centroid_crops(videos: torch.Tensor, size: int = CROP) -> torch.Tensor:
    """(N, T, 1, size, size): the window of each frame whose top-left corner is round(centroid - size / 2), clamped
    into the canvas."""
    videos = _check_clips(videos)
    n, frames, _, h, w = videos.shape
    c = frame_centroids(videos).reshape(-1, 2)
    x0 = torch.round(c[:, 0] - size / 2).long().clamp(0, w - size)
    y0 = torch.round(c[:, 1] - size / 2).long().clamp(0, h - size)
    flat = videos.reshape(-1, h, w)
    rows = y0[:, None] + torch.arange(size)[None]  # (NT, size)
    cols = x0[:, None] + torch.arange(size)[None]
    crops = flat[torch.arange(flat.shape[0])[:, None, None], rows[:, :, None], cols[:, None, :]]
    return crops.reshape(n, frames, 1, size, size)


@torch.no_grad()
def frame_labels(videos: torch.Tensor, classifier) -> torch.Tensor:
    """(N, T) digit labels of every frame (the frozen digits classifier on the centroid crops)."""
    crops = centroid_crops(videos)
    n, frames = crops.shape[:2]
    was = classifier.training
    classifier.eval()
    try:
        return classifier(crops.flatten(0, 1)).argmax(1).reshape(n, frames)
    finally:
        classifier.train(was)


def identity_consistency(videos: torch.Tensor, classifier, labels: torch.Tensor | None = None) -> dict:
    """{"consistency": mean over clips of the fraction of frames whose label is the clip's majority label,
    "class_accuracy": fraction of frames labelled as the requested class (only with ``labels`` (N,))}."""
    pred = frame_labels(videos, classifier)
    majority = torch.mode(pred, dim=1).values
    out = {"consistency": float((pred == majority[:, None]).double().mean())}
    if labels is not None:
        out["class_accuracy"] = float((pred == torch.as_tensor(labels)[:, None]).double().mean())
    return out


def motion_smoothness(videos: torch.Tensor) -> float:
    """Mean centroid acceleration |c_{t+1} - 2 c_t + c_{t-1}| (Euclidean, pixels / frame^2) over clips and frames;
    lower is smoother. Needs T >= 3."""
    c = frame_centroids(videos)
    if c.shape[1] < 3:
        raise ValueError("motion smoothness needs clips of at least 3 frames")
    acc = c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]
    return float(acc.norm(dim=-1).mean())


def frame_fd(samples: torch.Tensor, reference: torch.Tensor, classifier) -> float:
    """Per-frame digits Frechet distance: ``frechet_distance`` of the classifier features of all centroid crops of
    ``samples`` and of ``reference`` (compare values computed with equal counts; the estimate is biased upwards)."""
    a = centroid_crops(samples).flatten(0, 1)
    b = centroid_crops(reference).flatten(0, 1)
    return frechet_distance(digits_features(a, classifier), digits_features(b, classifier))


class VideoFeatureNet(nn.Module):
    """Small 3-D convolutional clip classifier whose penultimate layer is the FVD feature space.

    Conv3d(1 -> w, 3^3) - SiLU - Conv3d(w -> 2w, 3^3, stride (1, 2, 2)) - SiLU - Conv3d(2w -> 4w, 3^3, stride 2) -
    SiLU - global average pool - Linear(4w -> feature_dim) - SiLU = features; heads: digit identity (10) and
    initial heading (8, ``moving_digits.DIRECTIONS``). Input (N, T, 1, H, W) in [-1, 1].
    """

    def __init__(self, width: int = 16, feature_dim: int = 64, num_classes: int = 10, num_directions: int = 8):
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim, "num_classes": num_classes,
                       "num_directions": num_directions}
        self.body = nn.Sequential(
            nn.Conv3d(1, width, 3, padding=1), nn.SiLU(),
            nn.Conv3d(width, 2 * width, 3, stride=(1, 2, 2), padding=1), nn.SiLU(),
            nn.Conv3d(2 * width, 4 * width, 3, stride=2, padding=1), nn.SiLU())
        self.project = nn.Sequential(nn.Linear(4 * width, feature_dim), nn.SiLU())
        self.identity_head = nn.Linear(feature_dim, num_classes)
        self.direction_head = nn.Linear(feature_dim, num_directions)

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        h = self.body(videos.transpose(1, 2))  # (N, C, T, H, W) for Conv3d
        return self.project(h.mean((2, 3, 4)))

    def forward(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(videos)
        return self.identity_head(f), self.direction_head(f)


def train_video_feature_net(videos: torch.Tensor, labels: torch.Tensor, directions: torch.Tensor, *, steps: int,
                            batch_size: int = 64, lr: float = 3e-3, seed: int = 0) -> VideoFeatureNet:
    """Train a ``VideoFeatureNet`` on real clips with AdamW on CE(identity) + CE(direction); deterministic in
    ``seed`` (own generators for init and batches). Returns it in eval mode."""
    videos = _check_clips(videos)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VideoFeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(videos.shape[0], (batch_size,), generator=gen)
        ident, head = net(videos[idx])
        loss = F.cross_entropy(ident, labels[idx]) + F.cross_entropy(head, directions[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def video_features(videos: torch.Tensor, net: VideoFeatureNet, batch_size: int = 256) -> torch.Tensor:
    """Penultimate ``VideoFeatureNet`` features (N, feature_dim)."""
    videos = _check_clips(videos)
    return torch.cat([net.features(videos[s:s + batch_size]) for s in range(0, videos.shape[0], batch_size)])


def fvd(samples: torch.Tensor, reference: torch.Tensor, net: VideoFeatureNet) -> float:
    """Frechet video distance in our feature space: ||mu_s - mu_r||^2 + Tr(S_s + S_r - 2 (S_s S_r)^{1/2}) of the
    ``VideoFeatureNet`` features (Unterthiner et al. 2018, arXiv 1812.01717, with our net in place of I3D)."""
    return frechet_distance(video_features(samples, net), video_features(reference, net))


def video_report(samples: torch.Tensor, labels: torch.Tensor | None, reference: torch.Tensor, *, classifier,
                 feature_net: VideoFeatureNet) -> dict:
    """Every metric of this module for ``samples`` against ``reference`` clips (same count recommended)."""
    out = {"fvd": fvd(samples, reference, feature_net), "frame_fd": frame_fd(samples, reference, classifier),
           "smoothness": motion_smoothness(samples)}
    out.update(identity_consistency(samples, classifier, labels))
    return out
