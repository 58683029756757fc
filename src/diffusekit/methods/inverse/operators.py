"""Linear measurement operators y = A x + sigma_y n with an explicit SVD, A = U S V^T.

Images x have shape (B, *in_shape) (e.g. (B, C, H, W)); measurements y have shape (B, *out_shape). With
n = prod(in_shape) and m = prod(out_shape) <= n, the spectral interface (as DDRM, Kawar et al.
2022, arXiv 2201.11793 §4, needs it) is

    vt(x): (B, *in_shape) -> (B, n)     V^T x, the first m coordinates paired with ``singular_values``
    v(z):  (B, n) -> (B, *in_shape)     V z
    ut(y): (B, *out_shape) -> (B, m)    U^T y
    u(z):  (B, m) -> (B, *out_shape)    U z

so apply(x) = u(s * vt(x)[:, :m]); transpose(y) = A^T y = v([s * ut(y), 0]); pinv(y) = v([ut(y)/s, 0]), with
singular values below ``rcond * max(s)`` treated as zero (by pinv and by DDRM). V and U are orthogonal,
so V^T maps iid noise to iid noise. The noise level sigma_y is on the data scale (the [-1, 1] pixel scale
for digits); the operators themselves are noise-free and ``measure`` adds the noise. Matrices are kept in
float64 and cast to x's dtype at application.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...core.noise import GeneratorArg, randn


class LinearOperator:
    """Base class: subclasses set ``in_shape``, ``out_shape``, ``singular_values`` ((m,) float64) and
    implement ``vt``, ``v``, ``ut``, ``u``; ``apply``/``transpose``/``pinv`` follow from the SVD."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    singular_values: torch.Tensor
    rcond: float = 1e-3

    @property
    def n(self) -> int:
        return math.prod(self.in_shape)

    @property
    def m(self) -> int:
        return math.prod(self.out_shape)

    def vt(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def v(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ut(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def u(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- validation -------------------------------------------------------------------------------------
    def check_x(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; this operator takes (B, {_dims(self.in_shape)})")
        return x

    def check_y(self, y: torch.Tensor) -> torch.Tensor:
        if tuple(y.shape[1:]) != self.out_shape:
            raise ValueError(f"y has shape {tuple(y.shape)}; this operator measures (B, {_dims(self.out_shape)})")
        return y

    def _check_spec(self, z: torch.Tensor, size: int) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != size:
            raise ValueError(f"spectral coefficients have shape {tuple(z.shape)}; expected (B, {size})")
        return z

    # -- derived maps -----------------------------------------------------------------------------------
    def s_like(self, z: torch.Tensor) -> torch.Tensor:
        """Singular values (m,) in z's dtype/device."""
        return self.singular_values.to(dtype=z.dtype, device=z.device)

    def nonzero(self) -> torch.Tensor:
        """(m,) bool: singular values above rcond * max(s) (the ones pinv inverts)."""
        s = self.singular_values
        return s > self.rcond * float(s.max())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A x = U S V^T x: (B, *in_shape) -> (B, *out_shape)."""
        z = self.vt(x)
        return self.u(self.s_like(z) * z[:, : self.m])

    __call__ = apply

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y = V S^T U^T y: (B, *out_shape) -> (B, *in_shape)."""
        z = self.ut(y)
        return self.v(_pad(self.s_like(z) * z, self.n))

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A^+ y = V S^+ U^T y (singular values below rcond * max(s) dropped): (B, *out_shape) -> (B, *in_shape)."""
        z = self.ut(y)
        s, keep = self.s_like(z), self.nonzero().to(z.device)
        return self.v(_pad(torch.where(keep, z / torch.where(keep, s, 1), 0), self.n))

    def measure(self, x: torch.Tensor, sigma_y: float = 0.0, generator: GeneratorArg = None) -> torch.Tensor:
        """y = A x + sigma_y n, n ~ N(0, I) drawn per sample (sigma_y on the data scale)."""
        sigma_y = check_sigma_y(sigma_y)
        y = self.apply(x)
        return y + sigma_y * randn(y.shape, generator, dtype=y.dtype, device=y.device) if sigma_y > 0 else y


def check_sigma_y(sigma_y: float) -> float:
    if not (isinstance(sigma_y, (int, float)) and math.isfinite(sigma_y) and sigma_y >= 0):
        raise ValueError(f"sigma_y must be a finite number >= 0 (noise std on the data scale); got {sigma_y!r}")
    return float(sigma_y)


def _dims(shape) -> str:
    return ", ".join(map(str, shape))


def _pad(z: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([z, z.new_zeros(z.shape[0], n - z.shape[1])], dim=1)


def _image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image shape must be (C, H, W) with positive sizes; got {shape}")
    return shape


class MaskOperator(LinearOperator):
    """Inpainting: y = the observed pixels x[mask] (flattened, (B, m)). A is a row selection, so S = I,
    U = I and V^T is the permutation that lists observed coordinates first, then missing ones."""

    def __init__(self, mask: torch.Tensor, in_shape: Sequence[int]):
        self.in_shape = _image_shape(in_shape)
        mask = torch.as_tensor(mask, dtype=torch.bool)
        try:
            mask = mask.expand(self.in_shape)  # (H, W) masks apply to every channel
        except RuntimeError:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the image shape "
                             f"{self.in_shape}") from None
        flat = mask.reshape(-1)
        if not bool(flat.any()):
            raise ValueError("the mask observes no pixel; keep at least one")
        self.mask = mask.clone()
        observed, missing = torch.nonzero(flat).flatten(), torch.nonzero(~flat).flatten()
        self.perm = torch.cat([observed, missing])  # V^T x = x_flat[perm]
        self.inv_perm = torch.argsort(self.perm)
        self.out_shape = (int(observed.numel()),)
        self.singular_values = torch.ones(self.m, dtype=torch.float64)

    def vt(self, x):
        return self.check_x(x).flatten(1)[:, self.perm.to(x.device)]

    def v(self, z):
        z = self._check_spec(z, self.n)
        return z[:, self.inv_perm.to(z.device)].reshape(-1, *self.in_shape)

    def ut(self, y):
        return self.check_y(y)

    def u(self, z):
        return self._check_spec(z, self.m)

    def fill(self, y: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        """The measurement as an image with missing pixels set to ``value`` (for display)."""
        x = self.pinv(y)
        return torch.where(self.mask.to(x.device), x, torch.full_like(x, value))


class SeparableOperator(LinearOperator):
    """A = A_h ⊗ A_w acting on every channel: Y_c = A_h X_c A_w^T, with 1-D matrices A_h (m_h, H),
    A_w (m_w, W). Both are SVD'd once (A_h = U_h S_h V_h^T) and the Kronecker SVD is used:
    V^T x = V_h^T X V_w, singular values s_h[i] s_w[j]; the spectral coordinates (i < m_h, j < m_w)
    come first (in (c, i, j) order), the null-space ones after."""

    def __init__(self, a_h: torch.Tensor, a_w: torch.Tensor, in_shape: Sequence[int], *, rcond: float = 1e-3):
        self.in_shape = c, h, w = _image_shape(in_shape)
        if not 0 <= rcond < 1:
            raise ValueError(f"rcond must be in [0, 1); got {rcond}")
        self.rcond = float(rcond)
        a_h, a_w = (torch.as_tensor(a, dtype=torch.float64) for a in (a_h, a_w))
        if a_h.ndim != 2 or a_w.ndim != 2 or a_h.shape[1] != h or a_w.shape[1] != w:
            raise ValueError(f"1-D operators must have shapes (m_h, {h}) and (m_w, {w}); "
                             f"got {tuple(a_h.shape)} and {tuple(a_w.shape)}")
        if a_h.shape[0] > h or a_w.shape[0] > w:
            raise ValueError("1-D operators must not have more rows than columns")
        self.a_h, self.a_w = a_h, a_w
        self.u_h, s_h, vh_t = torch.linalg.svd(a_h)  # full: u (m_h, m_h), vh_t (H, H)
        self.u_w, s_w, vw_t = torch.linalg.svd(a_w)
        self.v_h, self.v_w = vh_t.T, vw_t.T
        mh, mw = a_h.shape[0], a_w.shape[0]
        self.out_shape = (c, mh, mw)
        self.singular_values = (s_h[:, None] * s_w[None, :]).expand(c, mh, mw).reshape(-1).clone()
        measured = torch.zeros(c, h, w, dtype=torch.bool)
        measured[:, :mh, :mw] = True
        flat = measured.reshape(-1)
        self.perm = torch.cat([torch.nonzero(flat).flatten(), torch.nonzero(~flat).flatten()])
        self.inv_perm = torch.argsort(self.perm)

    def _mats(self, ref: torch.Tensor, *names: str):
        return [getattr(self, k).to(dtype=ref.dtype, device=ref.device) for k in names]

    def vt(self, x):
        v_h, v_w = self._mats(self.check_x(x), "v_h", "v_w")
        return (v_h.T @ x @ v_w).flatten(1)[:, self.perm.to(x.device)]

    def v(self, z):
        z = self._check_spec(z, self.n)
        v_h, v_w = self._mats(z, "v_h", "v_w")
        zz = z[:, self.inv_perm.to(z.device)].reshape(-1, *self.in_shape)
        return v_h @ zz @ v_w.T

    def ut(self, y):
        u_h, u_w = self._mats(self.check_y(y), "u_h", "u_w")
        return (u_h.T @ y @ u_w).flatten(1)

    def u(self, z):
        z = self._check_spec(z, self.m)
        u_h, u_w = self._mats(z, "u_h", "u_w")
        return u_h @ z.reshape(-1, *self.out_shape) @ u_w.T

    def apply(self, x):
        """A x directly from the 1-D matrices (same result as U S V^T x)."""
        a_h, a_w = self._mats(self.check_x(x), "a_h", "a_w")
        return a_h @ x @ a_w.T


# -- constructors ---------------------------------------------------------------------------------------
def inpaint_box(in_shape: Sequence[int], box: tuple[int, int, int, int] | None = None) -> MaskOperator:
    """Box inpainting: pixels rows [r0, r1) x cols [c0, c1) are missing (default: the central half-size box)."""
    _, h, w = _image_shape(in_shape)
    r0, r1, c0, c1 = box if box is not None else (h // 4, h - h // 4, w // 4, w - w // 4)
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise ValueError(f"box (r0, r1, c0, c1) must satisfy 0 <= r0 < r1 <= {h}, 0 <= c0 < c1 <= {w}; got {box}")
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[r0:r1, c0:c1] = False
    return MaskOperator(mask, in_shape)


def inpaint_random(in_shape: Sequence[int], p_missing: float = 0.5, *, seed: int = 0) -> MaskOperator:
    """Random-pixel inpainting: each pixel (all channels together) is missing with probability ``p_missing``
    (one fixed mask for the batch, drawn from ``seed``)."""
    _, h, w = _image_shape(in_shape)
    if not 0 <= p_missing < 1:
        raise ValueError(f"p_missing must be in [0, 1); got {p_missing}")
    mask = torch.rand(h, w, generator=torch.Generator().manual_seed(seed)) >= p_missing
    return MaskOperator(mask, in_shape)


def block_average_matrix(size: int, factor: int) -> torch.Tensor:
    """(size // factor, size) matrix averaging consecutive blocks of ``factor`` samples."""
    if factor < 1 or size % factor:
        raise ValueError(f"super-resolution factor must be a positive divisor of the image size {size}; got {factor}")
    block = torch.full((1, factor), 1.0 / factor, dtype=torch.float64)
    return torch.kron(torch.eye(size // factor, dtype=torch.float64), block)


def super_resolution(in_shape: Sequence[int], factor: int = 2) -> SeparableOperator:
    """Super-resolution by factor x factor block averaging: y has shape (B, C, H/factor, W/factor)."""
    _, h, w = _image_shape(in_shape)
    return SeparableOperator(block_average_matrix(h, factor), block_average_matrix(w, factor), in_shape)


def gaussian_blur_matrix(size: int, sigma: float, radius: int | None = None) -> torch.Tensor:
    """(size, size) 1-D Gaussian blur with a normalised (2 radius + 1)-tap kernel and zero boundary."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"blur sigma must be a positive number of pixels; got {sigma}")
    radius = max(1, math.ceil(3 * sigma)) if radius is None else int(radius)
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    k = k / k.sum()
    idx = torch.arange(size)
    offset = idx[None, :] - idx[:, None]  # column - row
    taps = k[(offset + radius).clamp(0, 2 * radius)]
    return torch.where(offset.abs() <= radius, taps, torch.zeros((), dtype=torch.float64))


def gaussian_blur(in_shape: Sequence[int], sigma: float = 1.0, radius: int | None = None, *,
                  rcond: float = 0.05) -> SeparableOperator:
    """Separable Gaussian blur (zero boundary); y has x's shape.

    Its smallest singular values are tiny (about 6e-4 for sigma = 1 on 8 x 8), so an exact pseudo-inverse
    amplifies measurement noise by 1/s; the default ``rcond`` = 0.05 truncates them (pinv becomes a
    truncated-SVD inverse, and DDRM treats those directions as unobserved)."""
    _, h, w = _image_shape(in_shape)
    return SeparableOperator(gaussian_blur_matrix(h, sigma, radius), gaussian_blur_matrix(w, sigma, radius), in_shape,
                             rcond=rcond)


def denoising(in_shape: Sequence[int]) -> SeparableOperator:
    """Denoising: A = I (y = x + sigma_y n)."""
    _, h, w = _image_shape(in_shape)
    return SeparableOperator(torch.eye(h, dtype=torch.float64), torch.eye(w, dtype=torch.float64), in_shape)


OPERATORS = {"inpaint_box": inpaint_box, "inpaint_random": inpaint_random, "sr": super_resolution,
             "deblur": gaussian_blur, "denoise": denoising}


def make_operator(name: str, in_shape: Sequence[int], **options) -> LinearOperator:
    """Build a named operator: one of ``OPERATORS`` (options go to its constructor)."""
    if name not in OPERATORS:
        raise ValueError(f"unknown operator {name!r}; available: {', '.join(OPERATORS)}")
    return OPERATORS[name](in_shape, **options)


__all__ = ["LinearOperator", "MaskOperator", "SeparableOperator", "inpaint_box", "inpaint_random", "super_resolution",
           "gaussian_blur", "denoising", "block_average_matrix", "gaussian_blur_matrix", "make_operator", "OPERATORS",
           "check_sigma_y"]
