"""PPAP: router dispatch, LoRA expert parameter efficiency, data-free guidance direction of effect."""

import pytest
import torch
from torch import nn

from diffusekit.methods.ppap import (ExpertRouter, count_parameters, distill_experts, generate_distillation_data,
                                     lora_expert, partition_times)


class _Const(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        out = torch.zeros(x.shape[0], 4)
        out[:, self.k] = 1.0
        return out + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_router_dispatches_by_t():
    edges = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    router = ExpertRouter([_Const(k) for k in range(4)], edges)
    t = torch.tensor([0.0, 0.1, 0.25, 0.3, 0.6, 0.74, 0.75, 0.99, 1.0, -0.1, 1.5], dtype=torch.float64)
    expected = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 0, 3])
    assert torch.equal(router.expert_index(t), expected)
    x = torch.randn(len(t), 1, 8, 8, requires_grad=True)
    logits = router(x, t)
    assert torch.equal(logits.argmax(1), expected)
    logits.sum().backward()  # differentiable w.r.t. x
    assert x.grad is not None
    with pytest.raises(ValueError):
        ExpertRouter([_Const(0)], edges)


def test_partition_times():
    from diffusekit import zoo
    s = zoo.load("digits_unet").schedule
    for by in ("time", "logsnr"):
        e = partition_times(s, 4, by=by)
        assert e.numel() == 5 and bool((e[1:] > e[:-1]).all())
        assert float(e[0]) == pytest.approx(s.t_min) and float(e[-1]) == pytest.approx(s.t_max)
    lam = s.lam(partition_times(s, 4, by="logsnr"))
    assert torch.allclose(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(4), rtol=1e-3)


def test_lora_expert_is_parameter_efficient_and_backbone_frozen():
    from diffusekit.metrics.digits import DigitsClassifier
    torch.manual_seed(0)
    backbone = DigitsClassifier().eval()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    expert = lora_expert(backbone, rank=4)
    n_backbone = count_parameters(backbone, trainable_only=False)
    n_train = count_parameters(expert)
    assert 0 < n_train < 0.15 * n_backbone
    assert count_parameters(backbone) == 0
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(expert(x), backbone(x), atol=1e-6)  # zero-initialised adapters
    opt = torch.optim.SGD([p for p in expert.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        expert(x).logsumexp(1).sum().backward()
        opt.step()
        opt.zero_grad()
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        assert not torch.allclose(expert(x), backbone(x))


def test_data_free_experts_raise_target_accuracy():
    from diffusekit import zoo
    from diffusekit.core import make_grid, prior_sample
    from diffusekit.methods.classifier_guidance import ClassifierGuidedDenoiser
    from diffusekit.metrics import class_accuracy
    from diffusekit.samplers import sample_ddim

    den, clf = zoo.load("digits_unet"), zoo.load("digits_classifier")
    s = den.schedule
    x0 = generate_distillation_data(den, 300, steps=6, seed=1)
    router = distill_experts(clf, x0, s, partition_times(s, 4), steps=50, seed=0, batch_size=64)
    labels = torch.arange(10).repeat_interleave(5)
    null = torch.full_like(labels, den.null_class)
    x_T = prior_sample(s, (len(labels), 1, 8, 8), torch.Generator().manual_seed(0))
    ts = make_grid("trailing", s, 10)
    acc = {}
    for scale in (0.0, 10.0):
        with torch.no_grad():
            x = sample_ddim(ClassifierGuidedDenoiser(den, router, scale), x_T, ts,
                            cond={"class_labels": null, "guidance_labels": labels})
        acc[scale] = class_accuracy(x.clamp(-1, 1), labels, classifier=clf)
    assert acc[10.0] > acc[0.0] + 0.3, acc
