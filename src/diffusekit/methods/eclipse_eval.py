"""Personalisation cases and metrics for λ-ECLIPSE (used by ``bench eclipse`` and the ``captions_eclipse`` recipe).

A case is a held-out subject (a digit instance from the test split's 8 x 8 digits, never seen in training) drawn
alone in one colour / stroke, and a prompt asking for that digit in ANOTHER colour / stroke (single subject, a
centred digit) or two subjects as a left and a right digit (multi subject). Metrics of one generated image per case:

* composition alignment: the ``captions_judge`` accuracy of the requested layout, colours and strokes
  (``recipes_t2i.attribute_accuracy``);
* concept alignment: the judge's digit accuracy (the prompt's digit words are replaced by the subject images, so
  identity can only come from the subjects), and the CLIP image-embedding cosine of the image to the IDEAL image
  (the subject instance itself drawn as requested) minus the cosine to the same request drawn with other instances
  of the same digit (``concept_margin`` > 0: closer to this particular instance).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["personalization_cases", "alignment_metrics", "evaluate_personalization"]


def _other_instance(labels: np.ndarray, source: int, rng) -> int:
    pool = np.flatnonzero((labels == labels[source]) & (np.arange(len(labels)) != source))
    return int(rng.choice(pool))


def personalization_cases(n: int, *, multi: bool, seed: int = 0) -> dict:
    """``n`` cases: ``prompts``, ``subjects`` (n, S, 3, 24, 24) in mention order, ``requested`` attributes,
    ``ideal`` (n, 3, 24, 24: the subject instances as requested), ``others`` (same request, other instances) and
    ``subject_colour`` / ``subject_thickness`` (n, S) per slot (0 = left / only digit, 1 = right)."""
    from ..data.captioned import (ATTRIBUTE_KEYS, COLOURS, POSITIONS, THICKNESSES, attribute_row, caption_for, render,
                                  source_digits)
    from ..methods.eclipse_data import mention_order, render_subjects

    rng = np.random.default_rng([seed, 17, int(multi)])
    src_x, src_y = source_digits("test")
    labels = src_y.numpy()
    k_count = 2 if multi else 1
    req = {k: torch.full((n,), -1, dtype=torch.long) for k in ATTRIBUTE_KEYS}
    req["num_digits"][:] = k_count
    subject_colour = np.zeros((n, k_count), dtype=np.int64)
    subject_thick = np.zeros((n, k_count), dtype=np.int64)
    for k in range(k_count):
        source = rng.integers(len(labels), size=n)
        cs = rng.integers(len(COLOURS), size=n)
        ct = (cs + 1 + rng.integers(len(COLOURS) - 1, size=n)) % len(COLOURS)  # never the subject's colour
        req[f"digit_{k}"], req[f"source_{k}"] = torch.from_numpy(labels[source]).long(), torch.from_numpy(source)
        req[f"colour_{k}"] = torch.from_numpy(ct)
        req[f"thickness_{k}"] = torch.from_numpy(rng.integers(len(THICKNESSES), size=n))
        pos = "centre" if not multi else ("left", "right")[k]
        req[f"position_{k}"][:] = POSITIONS.index(pos)
        subject_colour[:, k], subject_thick[:, k] = cs, rng.integers(len(THICKNESSES), size=n)
    prompts, subjects = [], []
    for i in range(n):
        row = attribute_row(req, i)
        template, phrase = int(rng.integers(4)), int(rng.integers(3))
        prompts.append(caption_for(row, template, phrase, explicit_thin=True))
        order = mention_order(row, template)
        subjects.append(render_subjects([row[f"source_{k}"] for k in order], subject_colour[i, order],
                                        subject_thick[i, order], "test"))
    others = {k: v.clone() for k, v in req.items()}
    for k in range(k_count):
        others[f"source_{k}"] = torch.tensor([_other_instance(labels, int(s), rng) for s in req[f"source_{k}"]])
    return {"prompts": prompts, "subjects": torch.stack(subjects), "requested": req, "ideal": render(req, src_x),
            "others": render(others, src_x), "subject_colour": torch.from_numpy(subject_colour),
            "subject_thickness": torch.from_numpy(subject_thick)}


@torch.no_grad()
def alignment_metrics(images: torch.Tensor, cases: dict, judge, clip) -> dict:
    """Composition (layout / colour / thickness / all attributes but the digit) and concept (digit accuracy, CLIP
    cosine to the ideal image, ``concept_margin``) alignment of one image per case; ``subject_colour_copied``:
    fraction of slots drawn in the SUBJECT's colour instead of the requested one."""
    from ..methods.eclipse_data import embed_images
    from ..zoo.recipes_t2i import attribute_accuracy, predict_attributes

    pred = predict_attributes(judge, images)
    req = cases["requested"]
    acc = attribute_accuracy(pred, req)
    layout_ok = pred["num_digits"] == req["num_digits"]
    composition_ok = layout_ok.clone()
    for k in range(cases["subject_colour"].shape[1]):
        for a in ("colour", "thickness"):
            composition_ok &= pred[f"{a}_{k}"] == req[f"{a}_{k}"]
    copied = [(pred[f"colour_{k}"] == cases["subject_colour"][:, k]).double().mean()
              for k in range(cases["subject_colour"].shape[1])]
    z, z_ideal, z_other = (embed_images(clip, x) for x in (images, cases["ideal"], cases["others"]))
    cos_ideal, cos_other = (z * z_ideal).sum(1), (z * z_other).sum(1)
    return {"composition": float(composition_ok.double().mean()), "layout": acc["layout"], "colour": acc["colour"],
            "thickness": acc["thickness"], "concept_digit": acc["digit"], "all_correct": acc["all_correct"],
            "concept_cos_ideal": float(cos_ideal.mean()), "concept_cos_other": float(cos_other.mean()),
            "concept_margin": float((cos_ideal - cos_other).mean()),
            "subject_colour_copied": float(torch.stack(copied).mean()), "n": len(images)}


def evaluate_personalization(pipeline, judge, *, n: int = 200, guidance: float = 3.0, steps: int = 20,
                             seed: int = 0) -> dict:
    """``alignment_metrics`` of ``pipeline`` (an ``EclipsePipeline``) on ``n`` single- and ``n`` multi-subject
    cases, one decoder sample each."""
    out = {}
    for name, multi in (("single", False), ("multi", True)):
        cases = personalization_cases(n, multi=multi, seed=seed)
        z = torch.cat([pipeline.embed([p], s[None]) for p, s in zip(cases["prompts"], cases["subjects"])])
        images = pipeline.decode(z, guidance=guidance, steps=steps, seed=seed)
        out[name] = alignment_metrics(images, cases, judge, pipeline.clip)
    return out
