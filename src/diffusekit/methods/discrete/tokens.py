"""Token codecs for 8 x 8 digits (images in [-1, 1]): grey levels per pixel, or a k-means VQ codebook of patches.

* :class:`GreyLevelTokens`: each pixel quantised to L grey levels (L = 4: 64 tokens, K = 4).
* :class:`PatchVQTokens`: non-overlapping p x p patches (p = 2: 16 tokens per digit) assigned to the nearest of K
  k-means centres (K = 16) fitted with scikit-learn on the training images; decoding is a codebook lookup
  (the VQ-VAE / VQ-Diffusion token pipeline with k-means in place of a learned encoder).
"""

from __future__ import annotations

import torch

__all__ = ["GreyLevelTokens", "PatchVQTokens"]


def _check_images(x: torch.Tensor, size: int | None = None) -> torch.Tensor:
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError(f"images must be a tensor (B, 1, S, S), got {getattr(x, 'shape', type(x))}")
    if size is not None and x.shape[-1] != size:
        raise ValueError(f"images must be {size} x {size}, got {tuple(x.shape[-2:])}")
    return x


class GreyLevelTokens:
    """Pixel x in [-1, 1] -> level round((x + 1) / 2 (L - 1)) in 0 .. L-1; decode level -> 2 level / (L - 1) - 1."""

    def __init__(self, levels: int = 4, image_size: int = 8):
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, got {levels!r}")
        self.num_classes, self.image_size = levels, image_size
        self.seq_len = image_size * image_size
        self.grid = (image_size, image_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> (B, S * S) long tokens, row-major."""
        x = _check_images(x, self.image_size)
        levels = torch.round((x.clamp(-1, 1) + 1) / 2 * (self.num_classes - 1)).long()
        return levels.flatten(1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, S * S) tokens -> (B, 1, S, S) images in [-1, 1]."""
        x = tokens.to(torch.float32) * (2.0 / (self.num_classes - 1)) - 1.0
        return x.reshape(-1, 1, self.image_size, self.image_size)


class PatchVQTokens:
    """k-means codebook (K, p * p) of p x p patches; ``fit`` on training images, then ``encode`` / ``decode``."""

    def __init__(self, codebook: torch.Tensor, patch: int = 2, image_size: int = 8):
        if codebook.ndim != 2 or codebook.shape[1] != patch * patch:
            raise ValueError(f"codebook must have shape (K, {patch * patch}), got {tuple(codebook.shape)}")
        if image_size % patch:
            raise ValueError(f"image_size {image_size} must be divisible by patch {patch}")
        self.codebook = codebook.to(torch.float32)
        self.patch, self.image_size = patch, image_size
        self.num_classes = codebook.shape[0]
        self.grid = (image_size // patch, image_size // patch)
        self.seq_len = self.grid[0] * self.grid[1]

    @classmethod
    def fit(cls, images: torch.Tensor, num_codes: int = 16, patch: int = 2, seed: int = 0) -> PatchVQTokens:
        """k-means (scikit-learn, k-means++ init, ``n_init=4``, fixed ``seed``) on every p x p patch of ``images``."""
        from sklearn.cluster import KMeans

        images = _check_images(images)
        patches = cls._patches(images, patch)
        km = KMeans(n_clusters=num_codes, n_init=4, random_state=seed).fit(patches.reshape(-1, patch * patch).numpy())
        centres = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        order = torch.argsort(centres.mean(1))  # codes sorted by brightness, so a codebook reads left to right
        return cls(centres[order], patch, images.shape[-1])

    @staticmethod
    def _patches(x: torch.Tensor, p: int) -> torch.Tensor:
        b, _, s, _ = x.shape
        g = s // p
        return x.reshape(b, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(b, g * g, p * p)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> (B, (S / p)^2) long: index of the nearest codebook vector of each patch (row-major)."""
        x = _check_images(x, self.image_size)
        patches = self._patches(x.to(torch.float32), self.patch)
        return torch.cdist(patches, self.codebook[None].expand(x.shape[0], -1, -1)).argmin(-1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, (S / p)^2) tokens -> (B, 1, S, S) images: the codebook patches put back in place."""
        b, (g, _), p = tokens.shape[0], self.grid, self.patch
        patches = self.codebook[tokens]                                   # (B, g * g, p * p)
        return patches.reshape(b, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(b, 1, g * p, g * p)
