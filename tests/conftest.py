import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from diffusekit.core.gmm import GaussianMixture  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mixture() -> GaussianMixture:
    """The tight 2-D test mixture: three well-separated full-covariance components with unequal weights.
    Its exact denoiser (``mixture.denoiser(schedule)``) is the ground truth of the solver tests."""
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], dtype=torch.float64)
    covs = torch.stack([0.1 * torch.eye(2), torch.tensor([[0.3, 0.12], [0.12, 0.2]]), 0.05 * torch.eye(2)]).double()
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


@pytest.fixture(scope="session")
def smooth_mixture() -> GaussianMixture:
    """2-D, 3 overlapping full-covariance components: smooth enough for solver orders to show at moderate
    step counts (tight, well-separated modes need thousands of steps to reach the asymptotics)."""
    means = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [0.0, -1.0]], dtype=torch.float64)
    covs = torch.tensor([[[0.5, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.6]], [[0.4, 0.0], [0.0, 0.3]]],
                        dtype=torch.float64)
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))
