"""``bench dit --quick``: same code path as the full UNet vs DiT comparison, at 150 training steps."""

import math

from diffusekit.bench import run_bench


def test_bench_dit_quick_both_nets_learn_at_equal_size(tmp_path):
    result = run_bench("dit", out=tmp_path, quick=True)
    assert (tmp_path / "dit.json").exists() and (tmp_path / "dit.png").exists()
    unet, dit = result["arms"]["unet"], result["arms"]["dit"]
    assert abs(dit["params"] - unet["params"]) / unet["params"] < 0.1  # equal size to within 10%
    # training moves both nets from noise toward digits; after 150 steps the UNet is much further along (the DiT's
    # zero-initialised adaLN blocks and lower learning rate start slower: 568 -> 92 vs 568 -> 381 measured)
    assert unet["final"]["digits_fd_g1"] < 0.5 * unet["untrained"]["digits_fd_g1"]
    assert dit["final"]["digits_fd_g1"] < 0.8 * dit["untrained"]["digits_fd_g1"]
    for arm in (unet, dit):
        assert arm["train_flops_per_example"] == 3 * arm["forward_flops_per_example"] > 0
        assert [p["step"] for p in arm["curve"]] == [0, 75, 150]
    # the transformer over 16 tokens costs fewer FLOPs per example than the convolutional UNet at equal size
    assert dit["forward_flops_per_example"] < unet["forward_flops_per_example"]
    assert math.isfinite(result["dit_over_unet_steps_per_s"]) and result["dit_over_unet_steps_per_s"] > 0
