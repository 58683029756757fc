"""Trajectory anchors by k-means, as DiffusionDrive builds them (Liao et al., CVPR 2025, arXiv 2411.15139).

DiffusionDrive's official repository ships its 20 NAVSIM anchors as a file; the clustering script lives only
on the nusc branch (users asked for it: hustvl/DiffusionDrive issues #28, #75). ``cluster_anchors`` is that
utility for any set of fixed-length trajectories.
"""

from __future__ import annotations

import numpy as np


def cluster_anchors(trajectories, k: int, seed: int = 0, *, n_init: int = 10) -> np.ndarray:
    """K-means anchors of trajectories: the K centroids minimising sum_i min_k ||tau_i - a_k||^2.

    Each trajectory (T waypoints of D coordinates, e.g. 8 x (x, y)) is flattened to one T*D vector, so the
    distance is the summed squared waypoint error, as in DiffusionDrive's anchors (arXiv 2411.15139: K = 20
    K-Means centroids of the training set's ground-truth trajectories). Uses scikit-learn's Lloyd k-means with
    k-means++ seeding, ``n_init`` restarts, all from ``seed``, so the same data and seed give the same anchors.

    Args:
        trajectories: (N, T, D) array-like (numpy or torch), N >= k.
        k: number of anchors (DiffusionDrive: 20).
        seed: random seed of the k-means++ initialisation.
        n_init: k-means restarts; the run with the lowest inertia is kept.
    Returns:
        (k, T, D) float64 anchors, sorted by their final waypoint (x, then y) so that the order does not
        depend on the initialisation.
    Raises:
        ValueError: if the array is not 3-D, holds non-finite values, or has fewer than k trajectories.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(trajectories.detach().cpu() if hasattr(trajectories, "detach") else trajectories,
                   dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"trajectories must have shape (N, T, D); got {x.shape}")
    k = int(k)
    if k < 1 or x.shape[0] < k:
        raise ValueError(f"k must be between 1 and the number of trajectories ({x.shape[0]}); got {k}")
    if not np.isfinite(x).all():
        raise ValueError("trajectories hold NaN or infinite values")
    flat = x.reshape(len(x), -1)
    km = KMeans(n_clusters=k, n_init=n_init, random_state=int(seed)).fit(flat)
    centres = km.cluster_centers_.reshape(k, *x.shape[1:])
    order = np.lexsort((centres[:, -1, 1], centres[:, -1, 0])) if x.shape[2] >= 2 else np.argsort(centres[:, -1, 0])
    return centres[order]
