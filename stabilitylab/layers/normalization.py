r"""Last-layer normalization (LLN) [singla2022improved]: a final linear layer with unit-norm rows.

A margin certificate for class :math:`y` needs, for every other class :math:`j`, the Lipschitz
constant of the logit difference :math:`f_y - f_j = (w_y - w_j)^\top g + (b_y - b_j)`, i.e.
:math:`\|w_y - w_j\|_2` times that of the features :math:`g` [tsuzuku2018lipschitz]. Singla et
al. normalize every row, :math:`w_i = v_i / \|v_i\|_2`, so that
:math:`\|w_i - w_j\| \le 2` whatever the parameters and no class can make its margins look
large by growing its row: with many classes (CIFAR-100) this makes 1-Lipschitz features far
easier to certify than an orthogonal last layer, whose :math:`C \times d` rows cannot all be
orthonormal when :math:`C > d`.

Unit rows do **not** make the matrix 1-Lipschitz: :math:`\|W\|_2` lies between 1 and
:math:`\sqrt C` (:math:`C` identical rows reach :math:`\sqrt C`). :class:`LLNLinear` therefore
declares its real constant: a certified Gram-iteration bound of :math:`\|W\|_2`
[delattre2023efficient], so network-level bounds stay sound; certificates should use the
pairwise row distances instead (:meth:`LLNLinear.pairwise_lipschitz`, or
:func:`stabilitylab.lipschitz.pairwise_logit_bound` on the exported model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab._checks import check_int, check_tol
from stabilitylab.layers.dense import _linear_with
from stabilitylab.lipschitz import pairwise_row_distances
from stabilitylab.spectral import gram_iteration

__all__ = ["LLNLinear"]


class LLNLinear(nn.Linear):
    r"""Linear layer with unit-norm rows (last-layer normalization) [singla2022improved]:
    :math:`x \mapsto W x + b` with :math:`W_{i,:} = V_{i,:} / \|V_{i,:}\|_2`.

    Guarantee: :math:`\|W_{i,:} - W_{j,:}\|_2 \le 2` for every pair of classes, so the logit
    difference :math:`f_i - f_j` is :math:`\|W_{i,:} - W_{j,:}\|`-Lipschitz on top of 1-Lipschitz
    features. The layer as a whole is :math:`\|W\|_2`-Lipschitz, :math:`1 \le \|W\|_2 \le
    \sqrt{C}`: ``lipschitz_constant`` is a certified bound of it (Gram iteration in float64,
    recomputed from the current weights at every access), not 1. A zero row stays zero.

    Shapes: ``(*, in_features) -> (*, out_features)``.

    Args:
        in_features, out_features, bias, device, dtype: as :class:`torch.nn.Linear`.
        tol: relative certified gap of the Gram iteration behind ``lipschitz_constant``.

    Raises:
        ValueError: sizes < 1, ``tol`` outside (0, 1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        tol: float = 1e-4,
        device=None,
        dtype=None,
    ) -> None:
        check_int(in_features, "in_features", 1)
        check_int(out_features, "out_features", 1)
        tol = check_tol(tol)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.tol = float(tol)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def normalized_weight(self) -> Tensor:
        """The weight applied, rows of unit L2 norm, ``(out_features, in_features)``."""
        norms = torch.linalg.vector_norm(self.weight, dim=1, keepdim=True)
        return self.weight / norms.clamp_min(torch.finfo(norms.dtype).tiny)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)

    @property
    def lipschitz_constant(self) -> float:
        """A certified upper bound of :math:`\\|W\\|_2` (a Python float, between about 1 and
        :math:`\\sqrt{C}`)."""
        with torch.no_grad():
            W = self.normalized_weight()
            W = W.cpu() if W.device.type == "mps" else W  # no float64 on MPS
            W = W.to(torch.float64)
            if not torch.any(W != 0):
                return 0.0
            return float(gram_iteration(W, tol=self.tol)) * (1 + 1e-12)

    def pairwise_lipschitz(self) -> Tensor:
        """``(C, C)``: :math:`\\|W_{i,:} - W_{j,:}\\|_2`, the Lipschitz constants of the logit
        differences per unit of the features' constant (at most 2; 0 on the diagonal), in the
        weight's dtype and differentiable (:func:`stabilitylab.lipschitz.pairwise_row_distances`)."""
        return pairwise_row_distances(self.normalized_weight())

    @torch.no_grad()
    def export_module(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the normalized weight (frozen copies); the pairwise
        certificate of :func:`stabilitylab.lipschitz.pairwise_logit_bound` reads its rows."""
        return _linear_with(self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tol={self.tol}"
