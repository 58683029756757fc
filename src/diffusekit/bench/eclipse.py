"""λ-ECLIPSE personalisation on the captioned digits: concept and composition alignment, the λ ablation, and the
cost against per-subject fine-tuning (issue 17).

Held-out subjects (digit instances of the test split, ``methods.eclipse_eval.personalization_cases``) are asked
for in another colour / stroke, alone (single) or as a left and a right digit (multi). Methods, one image per case:

* ``eclipse λ=...``: priors trained here on ``eclipse_pairs`` of the train split with λ ∈ LAMBDAS (same data,
  steps and seed), each decoded by the shipped ``captions_eclipse`` decoder (CFG 3). The prompt's digit words are
  replaced by the subject images, so identity can only come from the subjects.
* ``eclipse shipped``: the asset's own prior (λ = 0.2, longer training).
* ``text only``: the shipped prior with the digit words kept and no subject (no personalisation).
* ``fine-tune``: DreamBooth-style (``methods.eclipse_baseline``): ``captions_unet`` fine-tuned on each case's
  subject image(s) for FT_STEPS steps, then sampled with the prompt (digit words kept), CFG 3.

Metrics (``alignment_metrics``): composition (judge: layout, colour and stroke all right), concept (judge digit
accuracy; ``concept_margin``: CLIP cosine to the subject instance drawn as requested minus to other instances of
the digit). Prior-level: cosine of the predicted embedding to the ideal image's, text alignment (cosine to the
prompt's CLIP text embedding and in-batch text retrieval@1, what the contrastive term acts on). Cost: trained
parameters, training steps / seconds once (prior) vs per subject (fine-tuning).
"""

from __future__ import annotations

import io
import time

import numpy as np
import torch

from . import bench_progress, register_bench

LAMBDAS = (0.0, 0.2, 1.0)
FULL = {"train_n": 4000, "prior_steps": 400, "prior_net": None, "cases": 100, "steps": 16, "ft_cases": 5,
        "ft_steps": 50}
QUICK = {"train_n": 600, "prior_steps": 40, "prior_net": {"width": 32, "depth": 1, "num_heads": 4, "mlp_ratio": 2.0},
         "cases": 12, "steps": 8, "ft_cases": 2, "ft_steps": 10}
GUIDANCE = 3.0


@torch.no_grad()
def _prior_metrics(pipeline, cases) -> dict:
    from ..methods.eclipse_data import embed_images
    from ..zoo.recipes_eclipse import prompt_tokens

    z = torch.cat([pipeline.embed([p], s[None]) for p, s in zip(cases["prompts"], cases["subjects"])])
    tokens, mask = prompt_tokens(pipeline.tokenizer, cases["prompts"])
    z_txt = pipeline.clip.encode_text(tokens, mask)
    z_ideal = embed_images(pipeline.clip, cases["ideal"])
    sim = z @ z_txt.t()
    same_prompt = torch.tensor([[a == b for b in cases["prompts"]] for a in cases["prompts"]])
    hit = same_prompt[torch.arange(len(z)), sim.argmax(1)]
    return {"cos_ideal": float((z * z_ideal).sum(1).mean()), "text_cos": float(sim.diag().mean()),
            "text_retrieval@1": float(hit.double().mean())}, z


def _finetune_images(t2i, cases, idx, steps_ft: int, sample_steps: int) -> tuple[torch.Tensor, list[dict]]:
    from ..data.captioned import caption_for
    from ..methods.eclipse_baseline import finetune_on_subject
    from ..methods.eclipse_data import render_subjects
    from ..methods.text_conditioning import text_to_image

    images, costs = [], []
    for i in idx:
        req = cases["requested"]
        slots = range(cases["subject_colour"].shape[1])  # per slot: the subject image and its own caption
        subj = [caption_for({"num_digits": 1, "digit_0": int(req[f"digit_{k}"][i]),
                             "colour_0": int(cases["subject_colour"][i, k]),
                             "thickness_0": int(cases["subject_thickness"][i, k])}) for k in slots]
        subject_images = render_subjects([int(req[f"source_{k}"][i]) for k in slots],
                                         [int(cases["subject_colour"][i, k]) for k in slots],
                                         [int(cases["subject_thickness"][i, k]) for k in slots], "test")
        tuned, cost = finetune_on_subject(t2i, subject_images, subj, steps=steps_ft, seed=int(i))
        images.append(text_to_image(tuned, [cases["prompts"][i]], guidance=GUIDANCE, steps=sample_steps, seed=int(i)))
        costs.append(cost)
    return torch.cat(images), costs


def _subset(cases: dict, idx) -> dict:
    idx = torch.as_tensor(idx)
    out = {}
    for k, v in cases.items():
        if k == "prompts":
            out[k] = [v[i] for i in idx.tolist()]
        elif isinstance(v, dict):
            out[k] = {a: t[idx] for a, t in v.items()}
        else:
            out[k] = v[idx]
    return out


def _png(x: torch.Tensor, nrow: int) -> bytes:
    from PIL import Image

    from ..plotting import image_grid

    img = Image.fromarray(image_grid(x, nrow))
    img = img.resize((img.width * 4, img.height * 4), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@register_bench("eclipse", "λ-ECLIPSE: concept / composition alignment of personalised digits, λ ablation, cost "
                "against per-subject fine-tuning")
def run(quick: bool):
    import matplotlib.pyplot as plt

    from .. import zoo
    from ..data.captioned import make_captioned_digits
    from ..methods.eclipse_data import eclipse_pairs
    from ..methods.eclipse_eval import alignment_metrics, personalization_cases
    from ..zoo.recipes_eclipse import EclipsePipeline, train_eclipse_prior

    torch.set_num_threads(1)
    sizes = QUICK if quick else FULL
    shipped, judge, t2i = zoo.load("captions_eclipse"), zoo.load("captions_judge"), zoo.load("captions_unet")
    clip = shipped.clip
    t0 = time.perf_counter()
    pairs = eclipse_pairs(make_captioned_digits("train", n=sizes["train_n"]), clip, seed=1)
    pair_seconds = time.perf_counter() - t0
    pipelines, cost = {}, {}
    for lam in bench_progress(LAMBDAS, desc="eclipse: priors"):
        prior, history = train_eclipse_prior(clip, pairs, lam=lam, steps=sizes["prior_steps"], net=sizes["prior_net"])
        pipelines[f"eclipse λ={lam:g}"] = EclipsePipeline(clip, prior, shipped.decoder)
        cost[f"eclipse λ={lam:g}"] = {"trained_parameters": sum(p.numel() for p in prior.parameters()),
                                      "training_steps_once": sizes["prior_steps"],
                                      "training_seconds_once": history["seconds"] + pair_seconds,
                                      "per_subject_steps": 0}
    pipelines["eclipse shipped"] = shipped
    results, prior_level, samples = {}, {}, {}
    for setting in ("single", "multi"):
        cases = personalization_cases(sizes["cases"], multi=setting == "multi", seed=0)
        results[setting], prior_level[setting], samples[setting] = {}, {}, {}
        for name, pipe in bench_progress(pipelines.items(), desc=f"eclipse: {setting}", total=len(pipelines)):
            t1 = time.perf_counter()
            prior_level[setting][name], z = _prior_metrics(pipe, cases)
            per_prompt = (time.perf_counter() - t1) / len(z)
            images = pipe.decode(z, guidance=GUIDANCE, steps=sizes["steps"], seed=0)
            results[setting][name] = alignment_metrics(images, cases, judge, clip)
            samples[setting][name] = images
            if name in cost:
                cost[name]["per_subject_seconds"] = per_prompt
        z_text = shipped.embed(cases["prompts"])
        images = shipped.decode(z_text, guidance=GUIDANCE, steps=sizes["steps"], seed=0)
        results[setting]["text only"] = alignment_metrics(images, cases, judge, clip)
        samples[setting]["text only"] = images
        idx = list(range(sizes["ft_cases"]))
        ft_images, ft_costs = _finetune_images(t2i, cases, idx, sizes["ft_steps"], sizes["steps"])
        sub = _subset(cases, idx)
        results[setting]["fine-tune"] = alignment_metrics(ft_images, sub, judge, clip)
        results[setting]["eclipse shipped (same cases as fine-tune)"] = alignment_metrics(
            samples[setting]["eclipse shipped"][idx], sub, judge, clip)
        cost.setdefault("fine-tune", {"trained_parameters": ft_costs[0]["trained_parameters"],
                                      "training_steps_once": 0, "per_subject_steps": sizes["ft_steps"],
                                      "per_subject_seconds": []})
        cost["fine-tune"]["per_subject_seconds"] += [c["seconds"] for c in ft_costs]
        samples[setting]["fine-tune"] = ft_images
        samples[setting]["subject"] = cases["subjects"][:, 0]
        samples[setting]["ideal"] = cases["ideal"]
    cost["fine-tune"]["per_subject_seconds"] = float(np.mean(cost["fine-tune"]["per_subject_seconds"]))
    show = min(6, sizes["ft_cases"])
    rows = ("subject", "ideal", "eclipse shipped", "eclipse λ=0", "eclipse λ=0.2", "fine-tune", "text only")
    grid = torch.cat([samples[s][r][:show] for s in ("single", "multi") for r in rows])
    files = {"eclipse_samples.png": _png(grid, show)}

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    methods = [m for m in results["single"] if "same cases" not in m]
    for ax, metric in zip(axes[:2], ("composition", "concept_margin")):
        width = 0.38
        for j, setting in enumerate(("single", "multi")):
            ax.bar(np.arange(len(methods)) + (j - 0.5) * width, [results[setting][m][metric] for m in methods],
                   width, label=setting)
        ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric + (" (judge)" if metric == "composition" else " (CLIP cos, ideal - other instance)"))
        ax.legend(fontsize=8)
    for setting, style in (("single", "-o"), ("multi", "--s")):
        for key in ("cos_ideal", "text_retrieval@1"):
            axes[2].plot(LAMBDAS, [prior_level[setting][f"eclipse λ={lam:g}"][key] for lam in LAMBDAS], style,
                         label=f"{key} ({setting})")
    axes[2].set_xlabel("λ (contrastive weight)")
    axes[2].set_title("prior level: λ ablation")
    axes[2].legend(fontsize=7)
    fig.tight_layout()

    r = results
    summary = (f"single: composition {r['single']['eclipse shipped']['composition']:.2f}, concept digit "
               f"{r['single']['eclipse shipped']['concept_digit']:.2f} (from the image alone), margin "
               f"{r['single']['eclipse shipped']['concept_margin']:+.3f} vs text-only "
               f"{r['single']['text only']['concept_margin']:+.3f}; multi: composition "
               f"{r['multi']['eclipse shipped']['composition']:.2f}, concept digit "
               f"{r['multi']['eclipse shipped']['concept_digit']:.2f}; λ 0/0.2/1 text retrieval@1 (single) "
               + "/".join(f"{prior_level['single'][f'eclipse λ={lam:g}']['text_retrieval@1']:.2f}" for lam in LAMBDAS)
               + f"; fine-tune {cost['fine-tune']['per_subject_steps']} steps "
               f"{cost['fine-tune']['per_subject_seconds']:.1f} s per subject vs one prior pass")
    result = {"summary": summary, "quick": quick, "sizes": sizes, "lambdas": list(LAMBDAS), "guidance": GUIDANCE,
              "results": results, "prior_level": prior_level, "cost": cost, "files": files,
              "sample_rows": [f"{s}: {r_}" for s in ("single", "multi") for r_ in rows]}
    return result, fig
