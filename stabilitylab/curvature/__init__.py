r"""Curvature of the loss: Hessian spectra, sharpness, SAM, curvature regularizers, landscapes.

The book's third view of stability: how the loss moves when the *weights* (or the *inputs*)
move. Everything here works on the Hessian :math:`H = \nabla^2_\theta L(\theta)` without ever
forming it, through Hessian-vector products :math:`v \mapsto Hv` computed by double
backpropagation (Pearlmutter's trick): with :math:`g = \nabla_\theta L` built with
``create_graph=True``, :math:`Hv = \nabla_\theta (g^\top v)`, one extra backward pass.

* :func:`hvp`, :func:`input_hvp` and :class:`HessianOperator` (the gradient graph built once and
  reused for many products, which it counts);
* :func:`hessian_eigenvalues`: top-:math:`k` eigenvalues by Lanczos with full
  reorthogonalization or by power iteration with deflation [golub2013matrix];
* :func:`hessian_trace`: Hutchinson's estimator [hutchinson1989stochastic] and Hutch++
  [meyer2021hutch];
* :func:`hessian_density`: the spectral density by stochastic Lanczos quadrature
  [ghorbani2019investigation];
* :func:`sharpness` and :func:`m_sharpness`: the worst loss increase in a ball around the weights
  [keskar2017large] [foret2021sharpness], optionally in the adaptive geometry of ASAM
  [kwon2021asam], and the optimizer :class:`SAM`;
* regularizers (differentiable scalars to add to a training loss):
  :func:`gradient_norm_penalty`, :func:`input_curvature_penalty` (CURE,
  [moosavi2019robustness]) and :func:`hessian_trace_penalty`;
* :func:`loss_landscape` along :func:`filter_normalized_direction` or :func:`eigen_directions`
  [li2018visualizing];
* :func:`random_perturbation_loss`: the loss under random weight perturbations (average-case
  sharpness).

Conventions. A *closure* ``closure`` is a zero-argument callable returning the scalar loss
(it closes over the model and the data; ``loss_fn=``, its former name in these functions, still
works with a ``DeprecationWarning``), while ``loss_fn(outputs, labels)`` is a loss of a model's
outputs (:func:`m_sharpness`, :func:`loss_landscape`, ...); ``params`` is a sequence of the
tensors (requiring grad) the curvature is taken with respect to; a vector "shaped like params"
is a tuple of tensors with their shapes; ``n_iter`` counts iterations (Lanczos or power steps,
ascent steps, training steps). Functions that return more than one thing return a
``NamedTuple`` (:class:`Eigenpairs`, :class:`TraceEstimate`,
:class:`SharpnessEstimate`, :class:`SpectralDensity`) that unpacks like a plain tuple. Work runs
on the model's (or the parameters') device and data is moved there; functions that switch a
model to eval mode restore every submodule's own mode afterwards, also on error. Random numbers
are drawn on the CPU from ``generator`` and moved to the parameters' device, so that results do
not depend on the device. Krylov work (Lanczos bases, tridiagonal matrices, Hutch++ sketches) is
done in float64 whatever the parameters' dtype; Hessian-vector products are computed in the
parameters' dtype. A NaN or infinite loss, Hessian-vector product or input is a ``ValueError``.

Submodules: ``hessian`` (the operator and products), ``spectrum`` (eigenvalues, trace, density),
``sam`` (sharpness and SAM), ``regularizers`` and ``landscape``; every public name is
importable from ``stabilitylab.curvature`` itself, its documented home.
"""

from __future__ import annotations

from stabilitylab.curvature.hessian import HessianOperator, hvp, input_hvp
from stabilitylab.curvature.landscape import (
    eigen_directions,
    filter_normalized_direction,
    loss_landscape,
    random_perturbation_loss,
)
from stabilitylab.curvature.regularizers import gradient_norm_penalty, hessian_trace_penalty, input_curvature_penalty
from stabilitylab.curvature.sam import SAM, SharpnessEstimate, m_sharpness, sharpness, sharpness_during_training
from stabilitylab.curvature.spectrum import (
    Eigenpairs,
    SpectralDensity,
    TraceEstimate,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
)

__all__ = [
    "HessianOperator",
    "hvp",
    "input_hvp",
    "hessian_eigenvalues",
    "hessian_trace",
    "SpectralDensity",
    "hessian_density",
    "Eigenpairs",
    "TraceEstimate",
    "sharpness",
    "SharpnessEstimate",
    "m_sharpness",
    "sharpness_during_training",
    "SAM",
    "gradient_norm_penalty",
    "input_curvature_penalty",
    "hessian_trace_penalty",
    "filter_normalized_direction",
    "eigen_directions",
    "loss_landscape",
    "random_perturbation_loss",
]

# One documented home for every public name, whichever submodule defines it: the API reference,
# reprs and pickles say ``stabilitylab.curvature.X``.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
