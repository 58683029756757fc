"""Worker script for tests/test_distributed_resize.py; run under torchrun with 2 processes.

    python -m torch.distributed.run --nproc_per_node=2 tests/_ddp_resize_script.py OUT_DIR

With ``loss_noise="per_example"`` a step is a function of the global batch only, so the world size must
not change the loss curve. Here, at world size 2:

* ``full``: 8 steps from scratch (the reference curve the test compares single-process runs with);
* ``at4``: 4 steps, checkpoint in ``OUT_DIR/ws2_at4`` (the test resumes it at world size 1);
* ``from_ws1``: resumes the world-size-1 checkpoint the test wrote in ``OUT_DIR/ws1_at4`` and trains to 8.

Rank 0 writes ``OUT_DIR/ws2.json`` with the three loss curves and the final weights of ``full``.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

from diffusekit.core import VPDiscrete
from diffusekit.data import load_dataset
from diffusekit.nets import build_net
from diffusekit.training import DiffusionLoss, TrainConfig, Trainer
from diffusekit.training import distributed as D

NET = {"name": "mlp", "dim": 2, "hidden": 32, "depth": 2, "time_embed_dim": 16}
CONFIG = dict(steps=8, batch_size=32, lr=1e-2, warmup_steps=0, ema_decay=0.9, seed=5, log_every=1,
              loss_noise="per_example", progress=False)


def make_trainer(out_dir, steps: int = 8, grad_accum_steps: int = 1) -> Trainer:
    """The same run at any world size: fixed initial weights (seed 0), data, schedule and loss."""
    torch.manual_seed(0)
    net = build_net(NET)
    data = (load_dataset("gmm_ring8", "train", n=256).x,)
    loss = DiffusionLoss(VPDiscrete.named("linear", 100), "eps")
    config = TrainConfig(**{**CONFIG, "steps": steps, "grad_accum_steps": grad_accum_steps})
    return Trainer(net, loss, data, config, out_dir=out_dir)


def flat(module: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).tolist()


def main() -> None:
    out = Path(sys.argv[1])
    assert D.init_distributed(backend="gloo"), "expected WORLD_SIZE>1 from torchrun"
    full = make_trainer(out / "ws2_full")
    hist_full = full.fit()
    at4 = make_trainer(out / "ws2_at4", steps=4)
    at4.fit()
    from_ws1 = make_trainer(out / "ws1_at4")
    from_ws1.resume(out / "ws1_at4")
    hist_from_ws1 = from_ws1.fit()
    if D.is_main_process():
        result = {"world_size": D.world_size(), "full": hist_full["loss"], "from_ws1": hist_from_ws1["loss"],
                  "full_weights": flat(full.model), "ema_weights": flat(full.ema_model)}
        (out / "ws2.json").write_text(json.dumps(result))
    D.barrier()
    del full, at4, from_ws1  # free the DDP reducers before the process group (see _ddp_script.py)
    gc.collect()
    D.cleanup()


if __name__ == "__main__":
    main()
