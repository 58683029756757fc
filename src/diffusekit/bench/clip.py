"""The small CLIP and text-to-image on the captioned compositional digits.

Part 1 (zoo ``captions_clip``, Radford et al. 2021, arXiv 2103.00020): zero-shot accuracy of the first digit's
digit / colour / thickness (candidate captions scored by cosine similarity) and caption <-> image retrieval
recall@1/5 in galleries of 100, on the ``test`` split (attribute combinations seen in training, unseen digit
images) and the ``heldout`` split (first digit in a (digit, colour) pair never seen in training).

Part 2 (zoo ``captions_unet``: cross-attention UNet, caption dropout 0.1, CFG on the null caption; Ho & Salimans
2022, arXiv 2207.12598; Rombach et al. 2022, arXiv 2112.10752): images for the captions of the test split
("seen" combinations) and of the heldout split ("held-out" combinations), one per caption from fixed noise, with the
default sampler (``samplers.DEFAULT``, 10 steps) at guidance w in (1, 2, 3, 5) and for the null caption "" (the
unconditional model: what the captions get by chance). The judge is the zoo's ``captions_judge`` (an attribute
classifier trained on the real train split only): per-attribute accuracy (layout = number/placement of digits,
digit, colour, thickness over requested slots), ``pair_0`` (the first digit shows the requested digit AND colour:
the held-out pair itself in the heldout split) and all-correct; plus the CLIP score, mean 100 cos(image, caption)
under ``captions_clip`` (Hessel et al. 2021, arXiv 2104.08718, without their 2.5 rescaling), beside the same score
of real test images with their own captions.
"""

from __future__ import annotations

import time

import torch

from . import bench_progress, register_bench

GUIDANCE = (1.0, 2.0, 3.0, 5.0)
QUICK_GUIDANCE = (1.0, 3.0)
ATTRIBUTE_ORDER = ("layout", "digit", "colour", "thickness", "pair_0", "all_correct")


def _clip_and_tokenizer():
    """(zoo captions_clip, its tokenizer), or (None, None) while that asset is not part of the zoo."""
    from .. import zoo
    from ..nets.text import CaptionTokenizer

    if "captions_clip" not in zoo.MODELS:
        return None, None
    model = zoo.load("captions_clip")
    meta = zoo.manifest("captions_clip")
    tok_config = meta.get("tokenizer") or meta.get("text", {}).get("tokenizer") or {}
    return model, CaptionTokenizer(**tok_config)


@torch.no_grad()
def clip_score(model, tokenizer, images: torch.Tensor, captions: list[str], chunk: int = 500) -> float:
    """Mean 100 cos(E_img(x_i), E_txt(c_i)) over matched pairs (CLIP score; Hessel et al. 2021, arXiv 2104.08718)."""
    scores = []
    for i in range(0, len(captions), chunk):
        tokens, mask = tokenizer.encode(captions[i:i + chunk])
        scores.append((model.encode_image(images[i:i + chunk]) * model.encode_text(tokens, mask)).sum(1))
    return float(100 * torch.cat(scores).mean())


def _part_clip(model, tokenizer, n: dict) -> dict:
    from ..data.captioned import make_captioned_digits
    from ..nets.clip import retrieval_recall, zero_shot_accuracy

    out = {}
    for split in bench_progress(("test", "heldout"), desc="clip: zero-shot / retrieval"):
        data = make_captioned_digits(split, n=n[split])
        m = {f"zero_shot_{a}": zero_shot_accuracy(model, tokenizer, data, a) for a in ("digit", "colour", "thickness")}
        m.update(retrieval_recall(model, tokenizer, data, k=(1, 5), batch=100))
        out[split] = {**m, "n": n[split]}
    return out


def _part_t2i(clip_model, tokenizer, n: int, guidance: tuple, steps: int, seed: int = 0):
    from .. import zoo
    from ..data.captioned import make_captioned_digits
    from ..methods.text_conditioning import NULL_CAPTION, text_to_image
    from ..zoo.recipes_t2i import attribute_accuracy, predict_attributes

    denoiser, judge = zoo.load("captions_unet"), zoo.load("captions_judge")
    table, shown, timing = {}, {}, {}
    sets = {"seen": make_captioned_digits("test", n=n, seed=seed + 1),
            "heldout": make_captioned_digits("heldout", n=n, seed=seed + 1)}
    def score(images, captions):
        return None if clip_model is None else clip_score(clip_model, tokenizer, images, captions)

    real = {name: {**attribute_accuracy(predict_attributes(judge, d.images), d.attributes),
                   "clip_score": score(d.images, d.captions)} for name, d in sets.items()}
    runs = [("null", 1.0)] + [(f"w={w:g}", float(w)) for w in guidance]
    for name, data in bench_progress(sets.items(), desc="clip: text-to-image", total=len(sets)):
        table[name], shown[name] = {}, {}
        for label, w in bench_progress(runs, desc=f"{name}: guidance"):
            captions = [NULL_CAPTION] * len(data) if label == "null" else data.captions
            t0 = time.perf_counter()
            x = text_to_image(denoiser, captions, guidance=w, steps=steps, seed=seed)
            timing[f"{name}/{label}"] = time.perf_counter() - t0
            m = attribute_accuracy(predict_attributes(judge, x), data.attributes)
            m["clip_score"] = score(x, data.captions)
            table[name][label] = m
            shown[name][label] = x
    return {"table": table, "real_images": real, "n_captions": n, "steps": steps, "sample_seconds": timing,
            "denoiser": zoo.manifest("captions_unet")["net"]}, sets, shown


def _figure(t2i: dict, sets: dict, shown: dict, w_show: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import image_grid

    table = t2i["table"]
    runs = list(table["seen"])
    fig = plt.figure(figsize=(15, 9))
    for k, name in enumerate(("seen", "heldout")):
        ax = fig.add_subplot(2, 2, 1 + k)
        width = 0.8 / len(runs)
        for j, run in enumerate(runs):
            vals = [table[name][run][a] for a in ATTRIBUTE_ORDER]
            ax.bar([i + (j - (len(runs) - 1) / 2) * width for i in range(len(ATTRIBUTE_ORDER))], vals, width,
                   label=run)
        real = [t2i["real_images"][name][a] for a in ATTRIBUTE_ORDER]
        ax.scatter(range(len(ATTRIBUTE_ORDER)), real, marker="_", s=400, color="k", label="real images", zorder=3)
        ax.set_xticks(range(len(ATTRIBUTE_ORDER)), ATTRIBUTE_ORDER)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name} captions: attribute accuracy judged by the classifier", fontsize=9)
        ax.legend(fontsize=7, ncol=3)
    n_show = 8
    for k, name in enumerate(("seen", "heldout")):
        ax = fig.add_subplot(2, 2, 3 + k)
        ax.imshow(image_grid(shown[name][w_show][:n_show], n_show // 2, pad=2))
        ax.set_xticks([])
        ax.set_yticks([])
        caps = sets[name].captions[:n_show]
        ax.set_title(f"{name}, {w_show}:\n" + "\n".join(" | ".join(caps[i:i + 2]) for i in range(0, n_show, 2)),
                     fontsize=6)
    fig.tight_layout()
    return fig


def _run(quick: bool):
    clip_model, tokenizer = _clip_and_tokenizer()
    clip_n = {"test": 200, "heldout": 200} if quick else {"test": 2000, "heldout": 1000}
    part1 = _part_clip(clip_model, tokenizer, clip_n) if clip_model is not None else None
    guidance = QUICK_GUIDANCE if quick else GUIDANCE
    t2i, sets, shown = _part_t2i(clip_model, tokenizer, n=48 if quick else 300, guidance=guidance, steps=10)
    w_show = "w=3"
    fig = _figure(t2i, sets, shown, w_show)
    t = t2i["table"]
    clip_line = "captions_clip not in the zoo: CLIP part skipped" if part1 is None else (
        f"CLIP zero-shot digit/colour test {part1['test']['zero_shot_digit']:.2f}/"
        f"{part1['test']['zero_shot_colour']:.2f}, heldout {part1['heldout']['zero_shot_digit']:.2f}/"
        f"{part1['heldout']['zero_shot_colour']:.2f}; text->image recall@1 test "
        f"{part1['test']['text_to_image@1']:.2f}, heldout {part1['heldout']['text_to_image@1']:.2f}")
    def row(m):
        return "/".join(f"{m[a]:.2f}" for a in ATTRIBUTE_ORDER)

    summary = (clip_line + " | T2I " + "/".join(ATTRIBUTE_ORDER) + " (judge) seen: "
               + ", ".join(f"{r} {row(t['seen'][r])}" for r in t["seen"])
               + "; heldout: " + ", ".join(f"{r} {row(t['heldout'][r])}" for r in t["heldout"])
               + f"; real images {row(t2i['real_images']['seen'])}")
    return {"clip": part1, "text_to_image": t2i, "guidance": list(guidance), "summary": summary}, fig


register_bench("clip", "small CLIP zero-shot / retrieval, and text-to-image attribute accuracy vs CFG scale on seen "
                       "and held-out caption combinations")(_run)
