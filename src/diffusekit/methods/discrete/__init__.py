"""Discrete diffusion as its own process type (no branch in the Gaussian samplers): the VQ-Diffusion mask-and-replace
/ absorbing chain over K token classes + [MASK] (``process``), digit token codecs (``tokens``) and a small token
transformer predicting p_theta(x0 | x_t, c) (``net``). CDCD's contrastive terms live in ``methods.cdcd``.

    process = MaskReplaceDiffusion(num_classes=16, num_steps=80, absorbing=True)
    terms = process.loss_terms(net, tokens, generator, class_labels=y)
    loss = process.vb_loss(terms, aux_weight=5e-4)
    tokens = process.sample(net, batch, seq_len, generators, class_labels=y)
"""

from .net import TokenTransformer
from .process import MaskReplaceDiffusion, categorical_kl, sample_categorical, uniform_draws
from .tokens import GreyLevelTokens, PatchVQTokens

__all__ = ["GreyLevelTokens", "MaskReplaceDiffusion", "PatchVQTokens", "TokenTransformer", "categorical_kl",
           "sample_categorical", "uniform_draws"]
