"""Name -> factory of the test-time adaptation methods, used by ``diffusekit adapt`` and ``bench tta``.

Every method module ``methods/tta/<module>.py`` exposes ``build(classifier, *, quick=False, seed=0, **overrides)``
returning a ready adapter (``predict(x) -> logits``, ``reset()``, ``name``; see :mod:`.base`). The modules are
imported lazily, only when a method is built, so a method whose module is not installed (or fails to import) is
reported as missing (:func:`method_status`) without breaking the others.
"""

from __future__ import annotations

import importlib
import importlib.util

__all__ = ["METHODS", "MethodUnavailable", "available_methods", "method_status", "build_method"]

#: method name -> (module under diffusekit.methods.tta, factory function, one-line description)
METHODS: dict[str, tuple[str, str, str]] = {
    "source": ("base", "SourceModel", "no adaptation: the source classifier with its running BatchNorm statistics"),
    "tent": ("tent", "build", "TENT (arXiv 2006.10726): BN affine parameters, entropy, batch statistics"),
    "tent+filter": ("tent", "build_filtered", "TENT with the open-set wisdom-of-crowds filter (arXiv 2308.06879)"),
    "petal": ("petal", "build", "PETAL (arXiv 2303.15145): mean teacher, SWAG prior, Fisher-based restore"),
    "dda": ("dda", "build", "DDA (arXiv 2207.03442): diffusion projection of the input, self-ensemble"),
    "sda": ("sda", "build", "SDA: classifier fine-tuned on synthetic diffusion data + DDA projection"),
    "difftpt": ("difftpt", "build", "DiffTPT (arXiv 2308.06038): prompt tuning on diffusion-augmented views"),
}


class MethodUnavailable(ValueError):
    """A known method whose module is missing or does not import (another helper's part not yet committed)."""


def available_methods() -> list[str]:
    """All method names, in table order."""
    return list(METHODS)


def method_status(name: str) -> str | None:
    """None if method ``name`` can be built, else a one-line reason (ValueError for an unknown name)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    module, function, _ = METHODS[name]
    full = f"{__package__}.{module}"
    if importlib.util.find_spec(full) is None:
        return f"method {name!r} is not available yet: module diffusekit.methods.tta.{module} is missing"
    try:
        mod = importlib.import_module(full)
    except Exception as err:  # another helper's module in progress: report, do not crash the others
        return f"method {name!r} is not available: importing diffusekit.methods.tta.{module} failed ({err})"
    if not callable(getattr(mod, function, None)):
        return f"method {name!r} is not available: diffusekit.methods.tta.{module} has no {function}()"
    return None


def build_method(name: str, classifier, *, quick: bool = False, seed: int = 0, **overrides):
    """The adapter of method ``name`` for ``classifier`` with the method's recommended defaults.

    Raises ValueError for an unknown name and :class:`MethodUnavailable` when its module is missing.
    """
    reason = method_status(name)
    if reason is not None:
        raise MethodUnavailable(reason)
    module, function, _ = METHODS[name]
    factory = getattr(importlib.import_module(f"{__package__}.{module}"), function)
    if name == "source":
        return factory(classifier)
    return factory(classifier, quick=quick, seed=seed, **overrides)
