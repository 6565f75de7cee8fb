"""One valid call of every public function of ``stabilitylab``, on a chosen device and size.

Shared by ``gpu_check.py`` (every entry point on CUDA, timed) and ``tests/test_arguments_fuzz.py``
(every argument of every call replaced by invalid values must raise a ValueError/TypeError naming
it). Each :class:`Call` holds the function and its keyword arguments, so that a test can replace
one argument at a time; models and data are built on ``device`` with ``size`` = "tiny" (a CPU
test) or "full" (a GPU: realistic batch and image sizes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Call:
    """``fn(**kwargs)``; ``device_free``: the result holds no tensor (or tensors moved to the CPU on purpose)."""

    name: str
    fn: Callable
    kwargs: dict
    device_free: bool = False
    no_fuzz: tuple[str, ...] = field(default=())  # arguments that accept any object (documented)
    nan_passes: tuple[str, ...] = field(default=())  # tensors whose NaN propagates (documented, no host sync)

    def run(self):
        return self.fn(**self.kwargs)


def _gen(device: torch.device | None = None, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device or "cpu").manual_seed(seed)


def calls(device: torch.device | str = "cpu", size: str = "tiny") -> list[Call]:
    """The calls, with fresh models and data on ``device``."""
    from stabilitylab import attacks, certify, curvature, data, layers, lipschitz, losses, models, smoothing, spectral
    from stabilitylab import testing, timing, train
    import stabilitylab.frequency as frequency

    device = torch.device(device)
    full = size == "full"
    torch.manual_seed(0)
    g = _gen()

    # data: digits-shaped vectors and CIFAR-shaped images, generated
    n_vec, d, c = (512, 64, 10) if full else (32, 8, 3)
    n_img, ch, hw = (256, 3, 32) if full else (8, 1, 8)
    xv = torch.randn(n_vec, d, generator=g).to(device)
    yv = torch.randint(0, c, (n_vec,), generator=g).to(device)
    xi = torch.rand(n_img, ch, hw, hw, generator=g).to(device)
    yi = torch.randint(0, c, (n_img,), generator=g).to(device)
    mlp = models.mlp(d, c, hidden=(256, 256) if full else (16,)).to(device).eval()
    cnn = models.cnn(ch, c, input_size=hw, channels=(32, 64) if full else (4,), hidden=64 if full else 8)
    cnn = cnn.to(device).eval()
    lip_mlp = models.lipschitz_mlp(d, c, hidden=(256, 256) if full else (16,), layer="cayley", head="lln")
    lip_mlp = lip_mlp.to(device).eval()
    residual = _ResidualNet(ch, c, width=16 if full else 3).to(device).eval()  # lipschitz graph walk (issue 16)
    params = list(mlp.parameters())
    closure = lambda: nn.functional.cross_entropy(mlp(xv), yv)  # noqa: E731
    ce = nn.functional.cross_entropy
    kernel = torch.randn(64 if full else 4, 64 if full else 4, 3, 3, generator=g).to(device)
    W = torch.randn(512 if full else 12, 256 if full else 7, generator=g).to(device)
    smooth = smoothing.Smooth(mlp, num_classes=c, sigma=0.5)
    n_noise = 10_000 if full else 64
    logits = mlp(xv).detach()
    cpu_gen = _gen()

    out = [
        # spectral
        Call("spectral.power_iteration", spectral.power_iteration, dict(W=W, n_iter=50)),
        Call("spectral.gram_iteration", spectral.gram_iteration, dict(W=W, n_iter=6)),
        Call("spectral.conv_spectral_norm[circular exact]", spectral.conv_spectral_norm,
             dict(kernel=kernel, input_size=hw, padding="circular", method="exact")),
        Call("spectral.conv_spectral_norm[zeros gram]", spectral.conv_spectral_norm,
             dict(kernel=kernel, input_size=hw, padding="zeros", dense=True)),
        Call("spectral.conv_transfer_matrices", spectral.conv_transfer_matrices, dict(kernel=kernel, input_size=8)),
        Call("spectral.conv_operator_matrix", spectral.conv_operator_matrix,
             dict(kernel=kernel[:4, :4], input_size=6, padding="zeros")),
        Call("spectral.conv2d_norm", spectral.conv2d_norm, dict(kernel=kernel, input_size=hw, padding=1)),
        Call("spectral.conv2d_module_norm", spectral.conv2d_module_norm, dict(conv=cnn[0], input_size=hw)),
        Call("spectral.kernel_autocorrelation", spectral.kernel_autocorrelation, dict(kernel=kernel)),
        Call("spectral.kernel_gram_bound", spectral.kernel_gram_bound, dict(kernel=kernel, n_iter=2)),
        # lipschitz
        Call("lipschitz.pairwise_row_distances", lipschitz.pairwise_row_distances, dict(weight=W[:c])),
        Call("lipschitz.linear_head", lipschitz.linear_head, dict(model=lip_mlp), device_free=True),
        Call("lipschitz.upper_bound", lipschitz.upper_bound, dict(model=cnn, input_shape=(ch, hw, hw))),
        Call("lipschitz.layer_bounds", lipschitz.layer_bounds, dict(model=cnn, input_shape=(ch, hw, hw)),
             device_free=True),
        Call("lipschitz.pairwise_logit_bound", lipschitz.pairwise_logit_bound, dict(model=mlp, input_shape=(d,))),
        Call("lipschitz.lower_bound", lipschitz.lower_bound, dict(model=mlp, x=xv[:16], n_iter=10, generator=_gen())),
        Call("lipschitz.jacobian_singular_values", lipschitz.jacobian_singular_values, dict(fn=mlp, x=xv[0])),
        Call("lipschitz.backward_gradient_norms", lipschitz.backward_gradient_norms,
             dict(blocks=mlp, x=xv[:8], generator=_gen())),
        Call("lipschitz.report", lipschitz.report, dict(model=mlp, x=xv[:16], n_iter=5), device_free=True),
        Call("lipschitz.activation_constant", lipschitz.activation_constant, dict(module=nn.ReLU()),
             device_free=True),
        # lipschitz: the torch.fx graph walk (issue 16): residual sum, concatenation, up-sampling, folded BN
        Call("lipschitz.upper_bound[graph]", lipschitz.upper_bound,
             dict(model=residual, input_shape=(ch, hw, hw), graph=True, fold_batchnorm=True)),
        Call("lipschitz.pairwise_logit_bound[graph]", lipschitz.pairwise_logit_bound,
             dict(model=residual, input_shape=(ch, hw, hw), graph=True, fold_batchnorm=True)),
        Call("lipschitz.report[graph]", lipschitz.report,
             dict(model=residual, x=xi[:4], n_iter=2, generator=_gen(), graph=True, fold_batchnorm=True),
             device_free=True),
        # certify
        Call("certify.certified_radius", certify.certified_radius, dict(logits=logits, labels=yv, lipschitz=2.0)),
        Call("certify.certified_radii", certify.certified_radii, dict(model=lip_mlp, data=(xv, yv), lipschitz=1.0)),
        Call("certify.certified_accuracy", certify.certified_accuracy,
             dict(model=lip_mlp, data=(xv, yv), eps=0.1, lipschitz=1.0), device_free=True),
        Call("certify.certified_accuracy_curve", certify.certified_accuracy_curve,
             dict(model=lip_mlp, data=(xv, yv), eps_values=[0.0, 0.1], lipschitz=1.0), device_free=True),
        Call("certify.accuracy_curve", certify.accuracy_curve,
             dict(radii=torch.rand(n_vec, generator=g).to(device), eps_grid=[0.0, 0.5]), device_free=True),
        Call("certify.check_soundness", certify.check_soundness,
             dict(model=lip_mlp, x=xv[:16], y=yv[:16], lipschitz=1.0, n_iter=5, generator=_gen()),
             device_free=True),
        # attacks
        Call("attacks.fgsm", attacks.fgsm, dict(model=cnn, x=xi, y=yi, eps=0.03, bounds=(0.0, 1.0))),
        Call("attacks.pgd", attacks.pgd, dict(model=cnn, x=xi, y=yi, eps=0.5, norm="l2", n_iter=10,
                                               bounds=(0.0, 1.0), generator=_gen())),
        Call("attacks.minimal_adversarial_distance", attacks.minimal_adversarial_distance,
             dict(model=mlp, x=xv[:16], y=yv[:16], eps_max=20.0, n_search=4, n_iter=5, generator=_gen())),
        Call("attacks.robust_accuracy", attacks.robust_accuracy,
             dict(model=cnn, x=xi, y=yi, eps=0.03, bounds=(0.0, 1.0), generator=_gen()), device_free=True),
        # smoothing
        Call("smoothing.Smooth.predict", smooth.predict, dict(x=xv[0], n=n_noise, alpha=0.001, batch_size=1024,
                                                              generator=cpu_gen), device_free=True),
        Call("smoothing.Smooth.certify", smooth.certify, dict(x=xv[0], n0=64, n=n_noise, alpha=0.001,
                                                              batch_size=1024, generator=_gen()), device_free=True),
        Call("smoothing.Smooth.certify_lvm", smooth.certify_lvm, dict(x=xv[0], n0=64, n=n_noise, alpha=0.001,
                                                                      batch_size=1024, generator=_gen()),
             device_free=True),
        Call("smoothing.Smooth.vote_frequencies", smooth.vote_frequencies,
             dict(x=xv[:4], n=64, batch_size=256, generator=_gen()), device_free=True),
        Call("smoothing.certify_dataset", smoothing.certify_dataset,
             dict(smooth=smooth, data=(xv[:4], yv[:4]), n0=16, n=64, alpha=0.01, batch_size=256,
                  generator=_gen()), device_free=True),
        Call("smoothing.clopper_pearson_lower", smoothing.clopper_pearson_lower,
             dict(successes=90, trials=100, alpha=0.001), device_free=True),
        Call("smoothing.empirical_bernstein_radius", smoothing.empirical_bernstein_radius,
             dict(variance=torch.tensor([0.1, 0.2], device=device), n=1000, alpha=0.001)),
        Call("smoothing.max_certifiable_radius", smoothing.max_certifiable_radius,
             dict(sigma=0.5, n=1000, alpha=0.001), device_free=True),
        Call("smoothing.simplex_map", smoothing.simplex_map, dict(logits=logits, kind="sparsemax")),
        Call("smoothing.sparsemax", smoothing.sparsemax, dict(z=logits)),
        # smoothing: Lipschitz bases (smoothed constant, Lipschitz-aware radii, class partitions, variance)
        Call("smoothing.Smooth.certify[lipschitz]", smooth.certify,
             dict(x=xv[0], n0=64, n=n_noise, alpha=0.001, batch_size=1024, base_lipschitz=0.35,
                  soft_map=("softmax", 1.0), multiclass="partition", generator=_gen()), device_free=True),
        Call("smoothing.certify_dataset[lipschitz]", smoothing.certify_dataset,
             dict(smooth=smooth, data=(xv[:4], yv[:4]), n0=16, n=64, alpha=0.01, batch_size=256,
                  base_lipschitz=0.35, soft_map=("softmax", 1.0), generator=_gen()), device_free=True),
        Call("smoothing.smoothed_lipschitz_constant", smoothing.smoothed_lipschitz_constant,
             dict(L=1.0, sigma=0.5, value_range=1.0), device_free=True),
        Call("smoothing.simplex_map_lipschitz", smoothing.simplex_map_lipschitz,
             dict(kind="softmax", temperature=1.0, num_classes=c, logit_lipschitz=1.0), device_free=True),
        Call("smoothing.lipschitz_probit", smoothing.lipschitz_probit,
             dict(p=torch.tensor([0.6, 0.9], device=device), sigma=0.5, base_lipschitz=0.35), device_free=True),
        Call("smoothing.lipschitz_aware_radius", smoothing.lipschitz_aware_radius,
             dict(p_a=torch.tensor([0.6, 0.9], device=device), sigma=0.5, base_lipschitz=0.35,
                  p_b=torch.tensor([0.3, 0.05], device=device)), device_free=True),
        Call("smoothing.partition_bounds", smoothing.partition_bounds,
             dict(selection_counts=[50, 30, 10, 5, 5], counts=[500, 300, 100, 50, 50], alpha=0.01),
             device_free=True),
        Call("smoothing.smoothed_variance", smoothing.smoothed_variance,
             dict(fn=lip_mlp, x=xv[:2], sigma=0.5, n=n_noise, lipschitz=1.0, batch_size=1024,
                  generator=_gen(device)), device_free=True),
        # curvature
        Call("curvature.hvp", curvature.hvp, dict(closure=closure, params=params,
                                                  v=[torch.randn_like(p) for p in params])),
        Call("curvature.input_hvp", curvature.input_hvp,
             dict(input_loss=lambda x: ce(mlp(x), yv[:8]), x=xv[:8], v=torch.randn_like(xv[:8]))),
        Call("curvature.hessian_eigenvalues", curvature.hessian_eigenvalues,
             dict(closure=closure, params=params, k=2, generator=_gen())),
        Call("curvature.hessian_trace", curvature.hessian_trace,
             dict(closure=closure, params=params, n_samples=8, generator=_gen())),
        Call("curvature.hessian_density", curvature.hessian_density,
             dict(closure=closure, params=params, n_iter=20, generator=_gen()), device_free=True),
        Call("curvature.sharpness", curvature.sharpness, dict(closure=closure, params=params, rho=0.05, n_iter=3)),
        Call("curvature.m_sharpness", curvature.m_sharpness,
             dict(model=mlp, data=(xv, yv), m=8, rho=0.05, generator=_gen()), device_free=True),
        Call("curvature.sharpness_during_training", curvature.sharpness_during_training,
             dict(closure=closure, params=params, optimizer=torch.optim.SGD(params, lr=0.0), n_iter=2, every=1,
                  generator=_gen()), device_free=True),
        Call("curvature.eigen_directions", curvature.eigen_directions,
             dict(model=mlp, data=(xv, yv), k=1, generator=_gen()), device_free=True),
        Call("curvature.gradient_norm_penalty", curvature.gradient_norm_penalty, dict(closure=closure, params=params)),
        Call("curvature.hessian_trace_penalty", curvature.hessian_trace_penalty,
             dict(closure=closure, params=params, generator=_gen())),
        Call("curvature.input_curvature_penalty", curvature.input_curvature_penalty, dict(model=mlp, x=xv, y=yv)),
        Call("curvature.filter_normalized_direction", curvature.filter_normalized_direction,
             dict(model=cnn, generator=_gen())),
        Call("curvature.loss_landscape", curvature.loss_landscape,
             dict(model=mlp, data=(xv, yv), directions=curvature.filter_normalized_direction(mlp, generator=_gen()),
                  coordinates=[-1.0, -0.5, 0.0, 0.5, 1.0]), device_free=True),
        Call("curvature.random_perturbation_loss", curvature.random_perturbation_loss,
             dict(model=mlp, data=(xv, yv), radii=[0.0, 0.1], n_directions=2, generator=_gen()), device_free=True),
        # losses
        Call("losses.hkr_loss", losses.hkr_loss, dict(logits=logits, labels=yv), nan_passes=("logits",)),
        Call("losses.multiclass_hinge_loss", losses.multiclass_hinge_loss, dict(logits=logits, labels=yv), nan_passes=("logits",)),
        Call("losses.offset_cross_entropy", losses.offset_cross_entropy, dict(logits=logits, labels=yv), nan_passes=("logits",)),
        Call("losses.logit_annealing_loss", losses.logit_annealing_loss, dict(logits=logits, labels=yv), nan_passes=("logits",)),
        # losses.lipschitz_penalty: the Gram-iteration penalty sum_l relu(s_l - tau) of the CNN's layers
        Call("losses.lipschitz_penalty", losses.lipschitz_penalty,
             dict(model=cnn, input_shape=(ch, hw, hw), tau=0.5, n_iter=6, tol=1e-3)),
        # train
        Call("train.fit", train.fit, dict(model=models.mlp(d, c, hidden=(16,)).to(device), train_data=(xv, yv),
                                          epochs=1, batch_size=64, generator=_gen(), progress=False),
             device_free=True),
        Call("train.evaluate", train.evaluate, dict(model=mlp, data=(xv, yv)), device_free=True),
        Call("train.predict", train.predict, dict(model=mlp, data=xv)),
        Call("train.batches", lambda **kw: list(train.batches(**kw)), dict(data=(xv, yv), batch_size=8)),
        Call("train.seed_everything", train.seed_everything, dict(seed=0), device_free=True),
        Call("train.default_device", train.default_device, {}, device_free=True),
        # models
        Call("models.mlp", models.mlp, dict(in_features=d, num_classes=c, hidden=(8,), generator=_gen()),
             device_free=True),
        Call("models.cnn", models.cnn, dict(in_channels=ch, num_classes=c, input_size=hw, channels=(4,), hidden=8,
                                            generator=_gen()), device_free=True),
        Call("models.lipschitz_mlp", models.lipschitz_mlp, dict(in_features=d, num_classes=c, hidden=(8,),
                                                                layer="aol", generator=_gen()), device_free=True),
        Call("models.lipschitz_cnn", models.lipschitz_cnn, dict(in_channels=ch, num_classes=c, input_size=hw,
                                                                channels=(4,), generator=_gen()), device_free=True),
        Call("models.make_activation", models.make_activation, dict(spec="relu"), device_free=True),
        # layers (functions; the layer classes come below)
        Call("layers.bjorck_orthonormalize", layers.bjorck_orthonormalize,
             dict(W=W / torch.linalg.matrix_norm(W, 2), n_iter=5)),
        Call("layers.export", layers.export, dict(model=lip_mlp), device_free=True),
        # timing
        Call("timing.median_time", timing.median_time, dict(fn=lambda: mlp(xv), repeats=2), device_free=True),
        Call("timing.peak_memory", timing.peak_memory, dict(fn=lambda: mlp(xv), device=device), device_free=True),
        # testing
        Call("testing.scramble_parameters", testing.scramble_parameters,
             dict(module=nn.Linear(3, 3).to(device), generator=_gen()), device_free=True),
        # data
        Call("data.load_dataset", data.load_dataset, dict(name="moons", n_samples=64), device_free=True),
        Call("data.available_datasets", data.available_datasets, {}, device_free=True),
        # frequency (stabilitylab.frequency: band masks, band-limited noise, per-band sensitivity and SNR)
        Call("frequency.band_masks", frequency.band_masks, dict(size=hw, n_bands=3, kind="radial", device=device)),
        Call("frequency.band_decompose", frequency.band_decompose, dict(x=xi, n_bands=3, kind="square")),
        Call("frequency.bandlimited_noise", frequency.bandlimited_noise,
             dict(shape=tuple(xi.shape), band=1, n_bands=3, kind="radial", dtype=xi.dtype, device=device,
                  generator=_gen())),
        Call("frequency.band_sensitivity", frequency.band_sensitivity,
             dict(model=cnn, x=xi, n_bands=3, eps=0.5, n_samples=2, kind="radial", generator=_gen(), progress=False),
             device_free=True),
        Call("frequency.bandlimited_accuracy", frequency.bandlimited_accuracy,
             dict(model=cnn, x=xi, y=yi, n_bands=3, eps=0.5, n_samples=2, kind="radial", generator=_gen(),
                  progress=False), device_free=True),
        Call("frequency.band_energy", frequency.band_energy, dict(x=xi, n_bands=3, kind="radial")),
        Call("frequency.spectral_snr", frequency.spectral_snr,
             dict(x=xi, noise=0.1 * torch.randn(xi.shape, generator=g).to(device), n_bands=3, kind="radial")),
    ]
    out += _dynamics_calls(device, full, xv, yv, W, c)  # dynamics: see _dynamics_calls below
    out += _topology_calls(device, full)  # topology: see _topology_calls below
    # every layer: a training step (forward + backward) on the device
    b = 64 if full else 4
    conv_c, conv_hw = (64, 32) if full else (4, 8)
    layer_cases = {
        "SpectralLinear": (lambda: layers.SpectralLinear(d, d), (b, d)),
        "BjorckLinear": (lambda: layers.BjorckLinear(d, d), (b, d)),
        "AOLLinear": (lambda: layers.AOLLinear(d, d), (b, d)),
        "SLLLinear": (lambda: layers.SLLLinear(d), (b, d)),
        "CPLLinear": (lambda: layers.CPLLinear(d), (b, d)),
        "CayleyLinear": (lambda: layers.CayleyLinear(d, d), (b, d)),
        "BROLinear": (lambda: layers.BROLinear(d, d), (b, d)),
        "LLNLinear": (lambda: layers.LLNLinear(d, c), (b, d)),
        "SpectralConv2d": (lambda: layers.SpectralConv2d(conv_c, conv_c, 3), (b, conv_c, conv_hw, conv_hw)),
        "AOLConv2d": (lambda: layers.AOLConv2d(conv_c, conv_c, 3), (b, conv_c, conv_hw, conv_hw)),
        "SLLConv2d": (lambda: layers.SLLConv2d(conv_c), (b, conv_c, conv_hw, conv_hw)),
        "CPLConv2d": (lambda: layers.CPLConv2d(conv_c), (b, conv_c, conv_hw, conv_hw)),
        "CayleyConv2d": (lambda: layers.CayleyConv2d(conv_c, conv_c, 3), (b, conv_c, conv_hw, conv_hw)),
        "SOCConv2d": (lambda: layers.SOCConv2d(conv_c, conv_c, 3), (b, conv_c, conv_hw, conv_hw)),
        "BROConv2d": (lambda: layers.BROConv2d(conv_c, conv_c, 3), (b, conv_c, conv_hw, conv_hw)),
        "GroupSort": (lambda: layers.GroupSort(2), (b, d)),
        "MaxMin": (lambda: layers.MaxMin(), (b, d)),
        "Householder": (lambda: layers.Householder(d), (b, d)),
        "ScaledAvgPool2d": (lambda: layers.ScaledAvgPool2d(2), (b, conv_c, conv_hw, conv_hw)),
        "L2NormPool2d": (lambda: layers.L2NormPool2d(2), (b, conv_c, conv_hw, conv_hw)),
        "GlobalL2NormPool2d": (lambda: layers.GlobalL2NormPool2d(), (b, conv_c, conv_hw, conv_hw)),
        "InvertibleDownsampling": (lambda: layers.InvertibleDownsampling(2), (b, conv_c, conv_hw, conv_hw)),
    }
    for name, (make, shape) in layer_cases.items():
        out.append(Call(f"layers.{name}[train step]", _train_step, dict(make=make, shape=shape, device=device)))
        out.append(Call(f"layers.{name}[export]", _exported, dict(make=make, shape=shape, device=device)))
    return out


# dynamics (stabilitylab.dynamics): singular-value derivatives, SGD drift terms, the spectral monitor
def _dynamics_calls(device, full, xv, yv, W, c) -> list[Call]:
    import stabilitylab.dynamics as dynamics
    from stabilitylab import models, train

    g = _gen(seed=7)
    m, n = W.shape
    E = torch.randn(4, m, n, generator=g).to(device)
    net = models.mlp(xv.shape[1], c, hidden=(64,) if full else (8,)).to(device)
    grads = dynamics.per_sample_gradients(net, xv[:16], yv[:16], names=["1.weight"])["1.weight"]
    weight = net[1].weight.detach()
    monitor = dynamics.SpectralMonitor(every=1, drift_every=2, drift_samples=8, lr=0.1, generator=_gen())
    return [
        Call("dynamics.top_singular_pair", dynamics.top_singular_pair, dict(W=W)),
        Call("dynamics.singular_value_gradient", dynamics.singular_value_gradient, dict(W=W)),
        Call("dynamics.singular_value_hessian_quadform", dynamics.singular_value_hessian_quadform, dict(W=W, E=E)),
        Call("dynamics.lipschitz_drift_terms", dynamics.lipschitz_drift_terms,
             dict(W=weight, grad=grads.mean(0), per_sample_grads=grads, lr=0.1, batch_size=8, dataset_size=64)),
        Call("dynamics.per_sample_gradients", dynamics.per_sample_gradients, dict(model=net, x=xv[:16], y=yv[:16])),
        Call("dynamics.corrupt_labels", dynamics.corrupt_labels,
             dict(labels=yv, rate=0.2, num_classes=c, generator=_gen())),
        Call("dynamics.SpectralMonitor", dynamics.SpectralMonitor,
             dict(every=1, n_iter=4, exact_every=2, drift_every=2, drift_data=(xv, yv), drift_samples=8, lr=0.1,
                  batch_size=8, lower_points=xv[:4], generator=_gen()), device_free=True),
        Call("dynamics.SpectralMonitor.observe", monitor.observe,
             dict(model=net, step=0, x=xv[:8], y=yv[:8]), device_free=True),
        Call("train.fit[callbacks]", train.fit,
             dict(model=models.mlp(xv.shape[1], c, hidden=(8,)).to(device), train_data=(xv, yv), epochs=1,
                  batch_size=16, optimizer="sgd", momentum=0.0, progress=False,
                  callbacks=[dynamics.SpectralMonitor(drift_every=2, drift_samples=8, generator=_gen())]),
             device_free=True),
    ]


def _topology_calls(device: torch.device, full: bool) -> list[Call]:
    """stabilitylab.topology: orbits, persistence (with the ``topology`` extra), stable ranks,
    vectorizations, certified radii and point-cloud perturbations."""
    import importlib.util
    import math

    import stabilitylab.topology as topology

    n_clouds, n_points = (64, 200) if full else (3, 20)
    g = _gen(seed=11)
    clouds = torch.rand(n_clouds, n_points, 2, generator=g, dtype=torch.float64).to(device)
    labels = torch.arange(n_clouds).remainder(2).to(device)
    diagram = torch.tensor([[0.0, 0.3], [0.1, 0.5], [0.2, 0.25]], dtype=torch.float64, device=device)
    contour = topology.Contour(3, x_max=0.5).double().to(device)
    out = [
        Call("topology.orbit", topology.orbit, dict(r=4.1, n_points=n_points, n_orbits=2, generator=_gen()),
             device_free=True),
        Call("topology.pad_diagrams", topology.pad_diagrams,
             dict(diagrams=[[diagram, diagram[:1]], [diagram[:2], diagram]], n_bars=4, dtype=torch.float64)),
        Call("topology.stable_rank", topology.stable_rank,
             dict(diagram=diagram, t=torch.tensor([0.0, 0.1], dtype=torch.float64, device=device), p=2.0,
                  q=math.inf, contour=contour)),
        Call("topology.sorted_half_lengths", topology.sorted_half_lengths, dict(diagram=diagram, m=4, contour=contour)),
        Call("topology.certified_radius", topology.certified_radius,
             dict(margin=torch.tensor([0.5, -0.1], dtype=torch.float64, device=device), lipschitz=1.0, m=4,
                  sup_f=2.0)),
        Call("topology.perturb_clouds", topology.perturb_clouds, dict(clouds=clouds, eps=0.01, generator=_gen())),
    ]
    if importlib.util.find_spec("ripser") is not None:  # the optional extra
        model = topology.TopologicalClassifier(2, m=4, hidden=(8,), x_max=0.5, generator=_gen()).to(device)
        out += [
            Call("topology.persistence_diagrams", topology.persistence_diagrams,
                 dict(clouds=clouds, maxdim=1, progress=False)),
            Call("topology.attack_clouds", topology.attack_clouds,
                 dict(model=model, clouds=clouds[:2], labels=labels[:2], eps=0.01, n_iter=2, step_size=0.005,
                      maxdim=1, generator=_gen(), progress=False)),
        ]
    if importlib.util.find_spec("persim") is not None:
        out.append(Call("topology.bottleneck_distance", topology.bottleneck_distance,
                        dict(diagram_a=diagram, diagram_b=diagram[:2] + 0.01), device_free=True))
    return out

class _ResidualNet(nn.Module):
    """A small network the lipschitz graph walk traces (issue 16): conv + BatchNorm (folded), an
    identity skip, a concatenation with an up-sampled pooled copy, a linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = h + self.conv(h)
        h = torch.cat([h, self.up(nn.functional.max_pool2d(h, 2))], dim=1)
        return self.fc(torch.flatten(self.pool(h), 1))


def _train_step(make, shape, device):
    layer = make().to(device).train()
    x = torch.randn(shape, device=device, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    return y.detach()


def _exported(make, shape, device):
    from stabilitylab import layers

    layer = make().to(device).eval()
    x = torch.randn(shape, device=device)
    with torch.no_grad():
        y = layer(x)  # size-dependent convolutions export for the size they have seen
        gap = (layers.export(layer)(x) - y).abs().max()
    if gap > 1e-4 * max(1.0, float(y.abs().max())):
        raise AssertionError(f"the exported layer differs from the layer by {float(gap):.2e}")
    return y
