"""1-Lipschitz layers: every layer here is 1-Lipschitz in L2 whatever its parameter values.

Each layer carries ``lipschitz_constant``, its certified Lipschitz constant, which
:mod:`stabilitylab.lipschitz` reads when it bounds a network (1 for all of them except
:class:`LLNLinear`, whose unit rows bound the logit differences instead), and the layers with
parameters have ``export_module()``: :func:`export` turns a trained model into plain torch
modules for inference.

* normalized dense and convolutional layers: :class:`SpectralLinear`, :class:`BjorckLinear`,
  :class:`SpectralConv2d`;
* almost-orthogonal rescaling: :class:`AOLLinear`, :class:`AOLConv2d`;
* residual layers: :class:`SLLLinear`, :class:`SLLConv2d`, :class:`CPLLinear`, :class:`CPLConv2d`;
* orthogonal layers: :class:`CayleyLinear`, :class:`CayleyConv2d`, :class:`SOCConv2d`,
  :class:`BROLinear`, :class:`BROConv2d`;
* activations: :class:`GroupSort`, :class:`MaxMin`, :class:`Householder`;
* pooling: :class:`ScaledAvgPool2d`, :class:`L2NormPool2d`, :class:`GlobalL2NormPool2d`,
  :class:`InvertibleDownsampling`;
* last layer: :class:`LLNLinear`.

Tracing. Every layer works under ``torch.compile(layer, fullgraph=True)``, ``torch.export.export``
and on ``meta`` tensors: iterative bounds take fixed iteration counts (``n_iter``), evaluation
caches are bypassed while traced, and the forward reads no tensor value on the host (no
device-to-host sync in training). Input shapes are checked (a ``ValueError`` naming ``x`` and the
expected shape), which traces too. NaN/Inf parameters are refused (``ValueError`` naming the
parameter) by each layer's ``check_parameters()``, which ``export_module()`` (so :func:`export`)
and an untraced evaluation-mode forward call; a training-mode or traced forward does not check
values (a NaN parameter then gives NaN outputs).
"""

from stabilitylab.layers.activations import GroupSort, MaxMin
from stabilitylab.layers.aol import AOLConv2d, AOLLinear
from stabilitylab.layers.dense import BjorckLinear, SpectralConv2d, SpectralLinear, bjorck_orthonormalize
from stabilitylab.layers.export import export
from stabilitylab.layers.householder import Householder
from stabilitylab.layers.normalization import LLNLinear
from stabilitylab.layers.orthogonal import (
    BROConv2d,
    BROLinear,
    CayleyConv2d,
    CayleyLinear,
    SOCConv2d,
    TruncatedExpConv2d,
)
from stabilitylab.layers.pooling import GlobalL2NormPool2d, InvertibleDownsampling, L2NormPool2d, ScaledAvgPool2d
from stabilitylab.layers.sll import CPLConv2d, CPLLinear, ExportedResidual, SLLConv2d, SLLLinear

__all__ = [
    "GroupSort",
    "MaxMin",
    "Householder",
    "SpectralLinear",
    "BjorckLinear",
    "SpectralConv2d",
    "AOLLinear",
    "AOLConv2d",
    "SLLLinear",
    "SLLConv2d",
    "CPLLinear",
    "CPLConv2d",
    "ExportedResidual",
    "CayleyLinear",
    "CayleyConv2d",
    "SOCConv2d",
    "TruncatedExpConv2d",
    "BROLinear",
    "BROConv2d",
    "ScaledAvgPool2d",
    "L2NormPool2d",
    "GlobalL2NormPool2d",
    "InvertibleDownsampling",
    "LLNLinear",
    "bjorck_orthonormalize",
    "export",
]
