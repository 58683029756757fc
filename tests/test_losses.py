import pytest
import torch

from diffusekit.core import PREDICTION_TYPES, VESchedule, VPDiscrete, VPLinear, x0_loss_weight
from diffusekit.data import load_dataset
from diffusekit.nets import MLPDenoiserNet
from diffusekit.training import DiffusionLoss, TrainConfig, Trainer, loss_weight, sample_times


def test_min_snr_weight_is_min_snr_gamma_in_x0_space():
    s = VPLinear()
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    for prediction in PREDICTION_TYPES:
        w = loss_weight(t, s, prediction, "min_snr", min_snr_gamma=5.0)
        torch.testing.assert_close(w * x0_loss_weight(t, s, prediction), torch.clamp(s.snr(t), max=5.0))
    # the familiar eps form: min(SNR, gamma) / SNR
    torch.testing.assert_close(loss_weight(t, s, "eps", "min_snr"), torch.clamp(s.snr(t), max=5.0) / s.snr(t))


def test_edm_weighting_makes_the_edm_target_uniform():
    s = VESchedule()
    t = torch.logspace(-2, 1.5, 20, dtype=torch.float64)
    torch.testing.assert_close(loss_weight(t, s, "edm", "edm"), torch.ones_like(t))


def test_time_sampling():
    g = torch.Generator().manual_seed(0)
    d = VPDiscrete.named("linear", 1000)
    t = sample_times(d, 5000, g)
    steps = d.timestep_of_t(t)
    torch.testing.assert_close(steps, steps.round())  # integer training steps
    assert steps.min() >= 0 and steps.max() <= 999
    ln = sample_times(VESchedule(), 20_000, g, method="lognormal")
    assert abs(float(torch.log(ln).mean()) + 1.2) < 0.05
    with pytest.raises(ValueError, match="unknown time sampling"):
        sample_times(d, 3, g, method="beta")


def test_label_dropout_uses_the_null_class():
    seen = []

    class Spy(torch.nn.Module):
        config = {"num_classes": 10}

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, class_labels=None):
            seen.append(class_labels)
            return x * self.w

    loss = DiffusionLoss(VPLinear(), "eps", label_dropout=0.25)
    y = torch.randint(0, 10, (4000,), generator=torch.Generator().manual_seed(1))
    loss(Spy(), (torch.randn(4000, 2), y), torch.Generator().manual_seed(2))
    frac = float((seen[0] == 10).double().mean())
    assert abs(frac - 0.25) < 0.03
    assert torch.equal(seen[0][seen[0] != 10], y[seen[0] != 10])
    with pytest.raises(ValueError, match="unconditional"):
        DiffusionLoss(VPLinear())(MLPDenoiserNet(2), (torch.randn(4, 2), torch.zeros(4, dtype=torch.long)))


class ExactNet(torch.nn.Module):
    """The Bayes-optimal network for a Gaussian mixture: its exact posterior mean, output in any prediction type.
    Works for schedules whose network time is 1000 t (VPLinear, FlowSchedule)."""

    def __init__(self, mixture, schedule, prediction):
        super().__init__()
        self.mixture, self.schedule, self.prediction = mixture, schedule, prediction
        self.dtype_anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t_in, class_labels=None):
        from diffusekit.core import eps_from_x0, prediction_from_x0_eps

        t = t_in.double() / 1000
        x0 = self.mixture.posterior_mean(x, self.schedule.alpha(t), self.schedule.sigma(t))
        eps = eps_from_x0(x0, x, t, self.schedule)
        return prediction_from_x0_eps(x0, eps, t, self.schedule, self.prediction)


@pytest.mark.parametrize("prediction,weighting", [("eps", "uniform"), ("v", "uniform"), ("v", "min_snr"),
                                                  ("x0", "min_snr"), ("velocity", "uniform")])
def test_toy_training_loss_falls_towards_the_bayes_optimum(prediction, weighting):
    """Held-out loss (fixed t and noise) of a small MLP on the ring mixture: its excess over the exact
    posterior-mean predictor's loss (the irreducible part) shrinks to well under half in 300 steps."""
    from diffusekit.core import FlowSchedule
    from diffusekit.data import ring8_mixture

    data = load_dataset("gmm_ring8", "train", n=4096)
    held_out = (load_dataset("gmm_ring8", "test", n=4096).x.double(),)
    schedule = FlowSchedule(t_max=0.999) if prediction == "velocity" else VPLinear()
    loss = DiffusionLoss(schedule, prediction, weighting=weighting)
    torch.manual_seed(0)
    net = MLPDenoiserNet(2, hidden=64, depth=2, time_embed_dim=32)

    def held_out_loss(model):
        with torch.no_grad():
            return float(loss(model, held_out, torch.Generator().manual_seed(123)).mean())

    bayes = held_out_loss(ExactNet(ring8_mixture(), schedule, prediction))
    before = held_out_loss(net)
    Trainer(net, loss, (data.x,), TrainConfig(steps=300, batch_size=256, lr=3e-3, ema_decay=None, progress=False)).fit()
    after = held_out_loss(net)
    assert bayes < after < before
    assert after - bayes < 0.4 * (before - bayes), (bayes, before, after)
