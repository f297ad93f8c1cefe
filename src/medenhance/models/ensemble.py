"""Several triage networks of one recipe, trained with different seeds, scored as one (a deep
ensemble, Lakshminarayanan et al., NeurIPS 2017).

Networks trained alike from different random starts rank the studies they were trained for
alike, but each also keys on its own accidents of training; their mean keeps what they share.
Under a shift of the data (another site, another protocol) an ensemble's ranking and calibration
degrade less than its members' (Ovadia et al., NeurIPS 2019).

:class:`TriageEnsemble` has the interface of :class:`~.classifier.SmallResNet` that triage
scoring uses, and answers each call with the mean over its members: the logit, the feature
distance (each member to its own fitted Gaussian), the least familiar patch (each member against
its own patch memory), and the maps of where the evidence lies. Members keep everything they were
fitted with; the ensemble adds no parameters of its own.
"""

from __future__ import annotations

import torch
from torch import nn

from .classifier import SmallResNet
from .registry import register_model


class TriageEnsemble(nn.Module):
    """``members`` networks :class:`~.classifier.SmallResNet` (each with ``member_args``) whose
    outputs are averaged; input ``(N, 1, H, W)`` in [0, 1]."""

    scale = 1
    size_multiple = 16
    uses_sigma = False
    task = "classify"

    def __init__(self, members: int = 5, **member_args: object) -> None:
        super().__init__()
        if members < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(SmallResNet(**member_args)  # type: ignore[arg-type]
                                     for _ in range(members))

    @property
    def bulky_buffers(self) -> tuple[str, ...]:
        """Each member's patch memory, stored like a single network's (see its class)."""
        return tuple(f"members.{i}.{name}" for i, m in enumerate(self.members)
                     for name in m.bulky_buffers)

    @property
    def patch_memory(self) -> torch.Tensor | None:
        return self.members[0].patch_memory

    def _mean(self, call: str, *args: torch.Tensor) -> torch.Tensor:
        return torch.stack([getattr(m, call)(*args) for m in self.members]).mean(0)

    def forward(self, x: torch.Tensor, sigma: object = None) -> torch.Tensor:
        return self._mean("forward", x)

    def density_features(self, x: torch.Tensor) -> torch.Tensor:
        """The members' pooled features side by side, ``(N, members x density_dim)``; only
        :meth:`mahalanobis` reads them (each member's part against its own Gaussian)."""
        return torch.cat([m.density_features(x) for m in self.members], dim=1)

    def mahalanobis(self, features: torch.Tensor) -> torch.Tensor:
        parts = features.split([m.density_dim for m in self.members], dim=1)
        return torch.stack([m.mahalanobis(f) for m, f in zip(self.members, parts, strict=True)]
                           ).mean(0)

    def view_distance(self, x: torch.Tensor) -> torch.Tensor:
        return self._mean("view_distance", x)

    def location_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._mean("location_logits", x)

    def anomaly_logit(self, x: torch.Tensor) -> torch.Tensor:
        return self._mean("anomaly_logit", x)

    def patch_distance_map(self, x: torch.Tensor) -> torch.Tensor:
        return self._mean("patch_distance_map", x)

    def patch_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over the members of each one's least familiar patch."""
        return self._mean("patch_distance", x)


@register_model
def triage_ensemble(**kwargs: object) -> TriageEnsemble:
    """``members`` small_resnet networks (their arguments as for small_resnet), averaged."""
    return TriageEnsemble(**kwargs)  # type: ignore[arg-type]
