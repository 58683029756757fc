"""Latent vs pixel diffusion at equal training steps and equal parameter count (latent diffusion, Rombach et al.
2022, arXiv 2112.10752; the latent baseline of arXiv 2412.14422), and DiffuseVAE's refiner steps (Pandey et al.
2022, arXiv 2201.00308).

Pixel vs latent. For each image set (8 x 8 digits, class-conditional; 16 x 16 grey natural-image patches,
unconditional) a KL autoencoder (``methods.latent.autoencoder``, beta 1e-3, latent 2 x 4 x 4 for digits and
2 x 8 x 8 for patches: one 2x downsampling, half the numbers of the image) is trained first; then two UNets of
the same architecture and width, one on pixels and one on the scaled latents, are trained for the same number
of optimizer steps (AdamW lr 2e-3, batch 64, EMA 0.995, eps prediction, linear discrete VP of 1000 steps, label
dropout 0.1 on digits). The two nets differ only in the input/output channels of their first and last
convolutions, so their parameter counts agree to well under 1% (both are reported). Wall time is reported,
never used as the budget. Samples: DDIM, 20 steps on the trailing grid, guidance 1 (the conditional model), 100
per class for digits (and at CFG scale 2: the DDIM + CFG stack of arXiv 2412.14422); 1000 for patches.
Quality: digits-FD to the test split (``metrics.digits_fd`` with the zoo's digits classifier) and class
accuracy; for patches, the Frechet distance of raw pixels (256-d) to 1000 fresh crops of the train images. The
autoencoder's own reconstruction FD of the test split is the floor the latent model can reach.
``sample_ms_per_image`` is the sampling wall time per image (decode included).

DiffuseVAE on digits: a VAE (vector latent of 16, beta 1; 1000 updates) and a formulation-1 refiner
(``RefinerUNet``, width 32, 1500 updates; quick: 300 and 1000 at width 16); from the same 1000 prior latents
z ~ N(0, I), the FD of the VAE's D(z) alone and of the refiner's output after 1, 5 and 20 DDIM steps.

Measured (full run, 474 s, 1 torch thread): digits-FD pixel 7.4 (accuracy 0.965) vs latent 19.3 (0.889) at 1500
steps and 756k parameters each, autoencoder floor 1.0; at CFG 2: 54.8 (1.000) vs 26.0 (0.977). Sampling 5.7 vs
1.7 ms per image. Patches pixel-FD 51.6 vs latent 22.5 at 800 steps (300k parameters), floor 1.6. DiffuseVAE:
VAE 80.5, refiner 1 / 5 / 20 steps 370 / 74.3 / 56.5. So the latent model wins on patches and samples 3-5x
faster, but on digits, at this budget, the pixel model is closer to the data (the quick run's 100 steps still
favour the latent one); one refiner step is far worse than the VAE, five already better.
"""

from __future__ import annotations

import time

import torch

from ..core import CFGDenoiser, VPDiscrete, make_grid, prior_sample
from ..data import load_dataset
from ..methods.latent import LatentDenoiser, encode_dataset, latent_unet, train_autoencoder
from ..methods.latent.diffusevae import train_diffusevae
from ..metrics import class_accuracy, digits_fd, frechet_distance
from ..nets import UNet, count_parameters
from ..samplers import sample_ddim
from ..training import DiffusionLoss, TrainConfig, Trainer
from . import bench_progress, register_bench

SAMPLE_STEPS = 20
CFG_SCALE = 2.0
REFINER_STEPS = (0, 1, 5, 20)  # 0: the VAE alone
# *_width: UNet base channels (pixel and latent nets alike); ae_width: the autoencoders'; the DiffuseVAE refiner
# needs about 1000 updates before its 20-step output beats the VAE (measured: 600 updates at width 16 did not)
FULL = {"digits_steps": 1500, "patches_steps": 800, "ae_steps": {"digits": 1000, "patches": 800},
        "vae_steps": 1000, "refiner_steps": 1500,
        "n_patches_train": 20_000, "n_eval": 1000, "digits_width": 32, "patches_width": 16,
        "ae_width": {"digits": 32, "patches": 16}, "vae_width": 32, "refiner_width": 32}
QUICK = {"digits_steps": 100, "patches_steps": 20, "ae_steps": {"digits": 100, "patches": 100},
         "vae_steps": 300, "refiner_steps": 1000,
         "n_patches_train": 1000, "n_eval": 360, "digits_width": 8, "patches_width": 8,
         "ae_width": {"digits": 16, "patches": 8}, "vae_width": 16, "refiner_width": 16}


def _train_net(net: torch.nn.Module, data: tuple, steps: int, seed: int) -> tuple[torch.nn.Module, DiffusionLoss,
                                                                                  dict]:
    schedule = VPDiscrete.named("linear", 1000)
    loss = DiffusionLoss(schedule, "eps", label_dropout=0.1 if len(data) > 1 else 0.0)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup_steps=min(50, steps), ema_decay=0.995, seed=seed,
                      progress=False, log_every=10**9)
    trainer = Trainer(net, loss, data, cfg)
    history = trainer.fit()
    return trainer.ema_model.eval(), loss, {"steps": history["step"], "seconds": history["seconds"],
                                            "params": count_parameters(net)}


def _sample(denoiser, shape: tuple, labels, seed: int, decode=None) -> tuple[torch.Tensor, float]:
    """(images clipped to [-1, 1], wall ms per image) with DDIM on the trailing grid, then ``decode`` (latents)."""
    ts = make_grid("trailing", denoiser.schedule, SAMPLE_STEPS)
    cond = {"class_labels": labels} if labels is not None else {}
    t0 = time.perf_counter()
    with torch.no_grad():
        x = sample_ddim(denoiser, prior_sample(denoiser.schedule, shape, torch.Generator().manual_seed(seed)), ts,
                        cond=cond)
        if decode is not None:
            x = decode(x)
    return x.clamp(-1, 1), 1000 * (time.perf_counter() - t0) / shape[0]


def _pixel_vs_latent(name: str, p: dict, classifier) -> tuple[dict, dict]:
    steps = p[f"{name}_steps"]
    width = p[f"{name}_width"]
    n = p["n_eval"]
    if name == "digits":
        train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
        x, labels, reference, reference_labels = train.x, train.y, test.x, test.y
        eval_labels = torch.arange(n) % 10
        mult = (1, 2)
    else:
        x = load_dataset("patches", "train", n=p["n_patches_train"], seed=0).x
        reference = load_dataset("patches", "train", n=n, seed=1).x
        labels, eval_labels, reference_labels = None, None, None
        mult = (1, 2, 2)

    def quality(samples: torch.Tensor, sample_labels) -> dict:
        if name == "digits":
            return {"fd": digits_fd(samples, reference, classifier=classifier),
                    "accuracy": class_accuracy(samples, sample_labels, classifier=classifier)}
        return {"fd": frechet_distance(samples.flatten(1).double(), reference.flatten(1).double())}

    ae, ae_info = train_autoencoder(x, latent_channels=2, downsample=1, base_channels=p["ae_width"][name],
                                    beta=1e-3, steps=p["ae_steps"][name], seed=0)
    with torch.no_grad():
        recon = ae.reconstruct(reference).clamp(-1, 1)
    side = x.shape[-1]
    num_classes = 10 if labels is not None else None
    torch.manual_seed(1)
    pixel_net = UNet(in_channels=x.shape[1], base_channels=width, channel_mult=mult,
                     attention_resolutions=(side // 2 ** (len(mult) - 1),), num_classes=num_classes, image_size=side)
    torch.manual_seed(1)
    latent_net = latent_unet(ae.latent_shape, num_classes=num_classes, base_channels=width, channel_mult=mult)
    data = (x, labels) if labels is not None else (x,)
    pixel, loss, pixel_info = _train_net(pixel_net, data, steps, seed=2)
    z0 = encode_dataset(ae, x)
    latent, _, latent_info = _train_net(latent_net, (z0, labels) if labels is not None else (z0,), steps, seed=2)
    denoisers = {"pixel": loss.denoiser(pixel),
                 "latent": LatentDenoiser(latent, loss.schedule, ae, "eps", scale_input=loss.scale_input)}
    rows, shown = {}, {}
    for method, den in denoisers.items():
        shape = (n, *x.shape[1:]) if method == "pixel" else (n, *ae.latent_shape)
        samples, ms = _sample(den, shape, eval_labels, seed=3, decode=getattr(den, "decode", None))
        rows[method] = {**quality(samples, eval_labels), "sample_ms_per_image": ms,
                        **(pixel_info if method == "pixel" else latent_info)}
        shown[method] = samples
        if labels is not None:  # the baseline stack of arXiv 2412.14422: DDIM + classifier-free guidance
            samples, ms = _sample(CFGDenoiser(den, CFG_SCALE), shape, eval_labels, seed=3,
                                  decode=getattr(den, "decode", None))
            rows[f"{method}+cfg{CFG_SCALE:g}"] = {**quality(samples, eval_labels), "sample_ms_per_image": ms}
    rows["autoencoder_reconstruction"] = {**quality(recon, reference_labels), "params": count_parameters(ae),
                                          "steps": ae_info["steps"], "seconds": ae_info["seconds"],
                                          "test_mse": float((recon - reference).pow(2).mean()),
                                          "scale_factor": ae_info["scale_factor"]}
    shown["autoencoder"] = recon
    return {"latent_shape": list(ae.latent_shape), "image_shape": list(x.shape[1:]), "train_steps": steps,
            "width": width, "rows": rows}, shown


def _diffusevae(p: dict, classifier) -> tuple[dict, dict]:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    dv, info = train_diffusevae(train.x, formulation=1, latent_dim=16, vae_steps=p["vae_steps"],
                                refiner_steps=p["refiner_steps"], vae_base_channels=p["vae_width"],
                                refiner_base_channels=p["refiner_width"], seed=0)
    z = dv.prior_latents(p["n_eval"], torch.Generator().manual_seed(4))
    rows, shown = {}, {}
    for steps in bench_progress(REFINER_STEPS, desc="latent: DiffuseVAE refiner steps"):
        t0 = time.perf_counter()
        out = dv.generate(z, steps, generator=torch.Generator().manual_seed(5))
        ms = 1000 * (time.perf_counter() - t0) / len(z)
        rows["vae" if steps == 0 else f"refiner@{steps}"] = {"fd": digits_fd(out, test.x, classifier=classifier),
                                                             "nfe": steps, "sample_ms_per_image": ms}
        shown[steps] = out
    return {"train": info, "rows": rows}, shown


def _run(quick: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import zoo
    from ..plotting import image_grid

    p = QUICK if quick else FULL
    classifier = zoo.load("digits_classifier")
    results, shown = {}, {}
    for name in bench_progress(("digits", "patches"), desc="latent: pixel vs latent"):
        results[name], shown[name] = _pixel_vs_latent(name, p, classifier)
    results["diffusevae"], dv_shown = _diffusevae(p, classifier)
    train_split_fd = digits_fd(load_dataset("digits", "train").x[:360], load_dataset("digits", "test").x,
                               classifier=classifier)

    fig, axes = plt.subplots(2, 3, figsize=(14, 9))
    n_show = 10
    for col, name in enumerate(("digits", "patches")):
        rows = results[name]["rows"]
        ax = axes[0, col]
        grid = torch.cat([shown[name][m][:n_show] for m in ("pixel", "latent", "autoencoder")])
        ax.imshow(image_grid(grid, n_show), cmap="gray", vmin=0, vmax=255)
        side = shown[name]["pixel"].shape[-1]
        ax.set_yticks([(i + 0.5) * (side + 1) for i in range(3)], ["pixel", "latent", "AE recon"])
        ax.set_xticks([])
        ax.set_title(f"{name}: FD pixel {rows['pixel']['fd']:.2f}, latent {rows['latent']['fd']:.2f}, "
                     f"AE {rows['autoencoder_reconstruction']['fd']:.2f}", fontsize=9)
    ax = axes[0, 2]
    grid = torch.cat([dv_shown[s][:n_show] for s in REFINER_STEPS])
    ax.imshow(image_grid(grid, n_show), cmap="gray", vmin=0, vmax=255)
    ax.set_yticks([(i + 0.5) * 9 for i in range(len(REFINER_STEPS))],
                  ["VAE D(z)" if s == 0 else f"refiner {s}" for s in REFINER_STEPS])
    ax.set_xticks([])
    ax.set_title("DiffuseVAE: same z, refiner steps", fontsize=9)
    for col, name in enumerate(("digits", "patches")):
        ax = axes[1, col]
        rows = results[name]["rows"]
        labels = ["pixel", "latent", "autoencoder_reconstruction"]
        ax.bar(range(3), [rows[k]["fd"] for k in labels], color=["C0", "C1", "C2"])
        ax.set_xticks(range(3), ["pixel", "latent", "AE recon"])
        ax.set_ylabel("digits-FD" if name == "digits" else "pixel FD")
        ax.set_title(f"{name}: {results[name]['train_steps']} steps each; ms/image pixel "
                     f"{rows['pixel']['sample_ms_per_image']:.2f}, latent {rows['latent']['sample_ms_per_image']:.2f}",
                     fontsize=9)
    ax = axes[1, 2]
    dv_rows = results["diffusevae"]["rows"]
    ax.plot(REFINER_STEPS[1:], [dv_rows[f"refiner@{s}"]["fd"] for s in REFINER_STEPS[1:]], "o-", label="refiner")
    ax.axhline(dv_rows["vae"]["fd"], color="C3", ls="--", label="VAE alone")
    ax.axhline(train_split_fd, color="k", ls=":", label="train split (360)")
    ax.set_xscale("log")
    ax.set_xlabel("refiner DDIM steps")
    ax.set_ylabel("digits-FD")
    ax.legend(fontsize=8)
    ax.set_title("DiffuseVAE (formulation 1)", fontsize=9)
    fig.tight_layout()

    d, pt, dv = results["digits"]["rows"], results["patches"]["rows"], dv_rows
    summary = (f"digits FD pixel {d['pixel']['fd']:.2f} vs latent {d['latent']['fd']:.2f} (AE recon "
               f"{d['autoencoder_reconstruction']['fd']:.2f}), ms/image {d['pixel']['sample_ms_per_image']:.2f} vs "
               f"{d['latent']['sample_ms_per_image']:.2f}; patches pixel-FD {pt['pixel']['fd']:.1f} vs latent "
               f"{pt['latent']['fd']:.1f}; DiffuseVAE FD VAE {dv['vae']['fd']:.1f}, refiner 1/5/20 steps "
               + "/".join(f"{dv[f'refiner@{s}']['fd']:.1f}" for s in REFINER_STEPS[1:]))
    return {"settings": p, "sampler": f"ddim, {SAMPLE_STEPS} steps, trailing grid, guidance 1",
            "train_split_fd": train_split_fd, **results, "summary": summary}, fig


register_bench("latent", "pixel vs latent diffusion at equal steps and parameters (digits, patches); DiffuseVAE "
                         "refiner at 1 / 5 / 20 steps vs the VAE alone")(_run)
