"""Worker script for tests/test_distributed.py; run under torchrun with 2 processes.

    python -m torch.distributed.run --nproc_per_node=2 tests/_ddp_script.py OUT_DIR

It checks, inside the real multi-process run, what a single process cannot see:

1. run A (8 steps): ranks start from DIFFERENT random weights (DDP must broadcast rank
   0's), train, and must end with identical parameters and EMA on every rank; each rank
   is given its own ``out_dir`` (``OUT_DIR/a_rank<r>``) so the test can verify that only
   rank 0 wrote files;
2. runs B + C: 4 steps with a checkpoint in a shared directory, then fresh trainers on
   both ranks resume and continue to 8 steps; loss curve and weights must equal run A
   exactly (per-rank loss generators and dropout RNG states are restored per rank).

Rank 0 writes ``OUT_DIR/result.json`` for the test to inspect.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from diffusekit.training import distributed as D
from diffusekit.training.trainer import TrainConfig, Trainer


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 32), nn.SiLU(), nn.Dropout(0.1), nn.Linear(32, 4))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


def denoise_loss(model, batch, generator):
    (x,) = batch
    t = torch.rand(x.shape[0], generator=generator)
    noise = torch.randn(x.shape, generator=generator)
    xt = (1 - t)[:, None] * x + t[:, None] * noise
    return ((model(xt, t) - noise) ** 2).mean(dim=1)


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def same_on_all_ranks(vec: torch.Tensor) -> bool:
    return all(torch.equal(v, vec) for v in D.all_gather_tensor(vec))


def main() -> None:
    out = Path(sys.argv[1])
    # gloo even where CUDA exists: this test trains on CPU (and nccl needs a GPU per rank).
    assert D.init_distributed(backend="gloo"), "expected WORLD_SIZE>1 from torchrun"
    ws, rk = D.world_size(), D.rank()
    data = (torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) + 1.0,)
    config = dict(steps=8, batch_size=16, lr=1e-2, log_every=2, progress=False, ema_decay=0.9, seed=3)

    def model_for_this_rank():
        torch.manual_seed(100 + rk)  # deliberately different per rank
        return MLP()

    init_differs = not same_on_all_ranks(flat(model_for_this_rank()))

    # A: uninterrupted, per-rank out_dir to detect writes from rank 1.
    a = Trainer(model_for_this_rank(), denoise_loss, data, TrainConfig(**config), out_dir=out / f"a_rank{rk}")
    hist_a = a.fit()
    params_a = flat(a.model)
    identical = same_on_all_ranks(params_a)
    ema_identical = same_on_all_ranks(flat(a.ema_model))

    # B + C: interrupted at step 4, resumed by fresh trainers from a shared directory.
    shared = out / "shared"
    b = Trainer(model_for_this_rank(), denoise_loss, data, TrainConfig(**{**config, "steps": 4}), out_dir=shared)
    b.fit()
    torch.manual_seed(7 + rk)  # scramble global RNG; resume must restore it per rank
    c = Trainer(model_for_this_rank(), denoise_loss, data, TrainConfig(**config), out_dir=shared)
    c.resume(shared)
    hist_c = c.fit()
    resume_exact = hist_c["loss"] == hist_a["loss"] and torch.equal(flat(c.model), params_a)
    resume_exact_all = bool(D.all_reduce_sum(torch.tensor([float(resume_exact)])).item() == ws)

    if D.is_main_process():
        result = {
            "world_size": ws,
            "backend": dist.get_backend(),
            "init_differs": init_differs,
            "identical": identical,
            "ema_identical": ema_identical,
            "resume_exact": resume_exact_all,
            "losses": hist_a["loss"],
            "local_batch_size": a.local_batch_size,
        }
        (out / "result.json").write_text(json.dumps(result))
    D.barrier()
    # free the DDP wrappers (their reducers hold the process group) before destroying the group: destroying it
    # first made gloo abort ~1 run in 3 at interpreter exit on a loaded machine ("terminate called without an
    # active exception"), after the results were already written
    del a, b, c
    gc.collect()
    D.cleanup()


if __name__ == "__main__":
    main()
