"""A registry of restoration networks: ``create_model(name, **kwargs)`` (after timm).

Each architecture lives in its own file and registers small entry points that only fix arguments.
``None`` keyword arguments are dropped, so an unset CLI or config value never overrides a default.
Every registered module follows one interface:

* ``forward(x, sigma=None)`` with ``x`` of shape ``(N, 1, H, W)`` on the [0, 1] scale and ``sigma``
  the Gaussian noise level on the same scale (a float or ``(N,)`` tensor), or ``None`` for blind use;
* attributes ``size_multiple`` (input sides must be multiples of it; the inferer pads),
  ``scale`` (output / input size) and ``uses_sigma`` (whether ``sigma`` changes the output).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

from ..errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its own name."""
    if fn.__name__ in _REGISTRY:
        raise ConfigError(f"model {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a shell-style ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered architecture; ``None`` arguments are ignored.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the known ones) or an argument it does not take.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    args = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return _REGISTRY[name](**args)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None
