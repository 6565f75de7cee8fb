"""stabilitylab.frequency against dense float64 oracles, closed forms and Monte Carlo.

The oracle of a band projection is built from the DFT matrix written out entry by entry
(:math:`F_{(k,l),(m,n)} = e^{-2\\pi i(km/H + ln/W)}/\\sqrt{HW}`), never from ``torch.fft``:
:math:`P_b = \\operatorname{Re}(F^* \\operatorname{diag}(\\mathbb 1_{B_b}) F)`.

Monte Carlo tolerances: a unit vector :math:`u` uniform on the sphere of an :math:`m`-dimensional
subspace with orthonormal basis :math:`Q` has, for :math:`A = Q^\\top W^\\top W Q`,
:math:`\\mathbb E\\,u^\\top A u = \\operatorname{tr}A/m` and
:math:`\\operatorname{Var} = 2(m \\operatorname{tr}A^2 - (\\operatorname{tr}A)^2)/(m^2(m+2))`.
With ``n`` independent draws the estimate is asserted within 5 standard errors
(:math:`5\\sqrt{\\operatorname{Var}/n}`); the seeds are fixed, so the tests are deterministic, and a
correct implementation fails one such check with probability below 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

import stabilitylab.frequency as frequency
from stabilitylab import lipschitz, models
from stabilitylab.testing import scramble_parameters

F64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- oracles


def dft_matrix(h: int, w: int) -> np.ndarray:
    """The orthonormal 2-D DFT of row-major flattened ``h x w`` images, entry by entry."""
    k, m = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    l, n = np.meshgrid(np.arange(w), np.arange(w), indexing="ij")
    fh = np.exp(-2j * np.pi * k * m / h) / math.sqrt(h)
    fw = np.exp(-2j * np.pi * l * n / w) / math.sqrt(w)
    return np.kron(fh, fw)


def projection(mask: torch.Tensor) -> tuple[np.ndarray, float]:
    """``(P, largest |imaginary part|)`` of :math:`F^* \\operatorname{diag}(mask) F` for one ``(H, W)`` mask."""
    h, w = mask.shape
    F = dft_matrix(h, w)
    P = F.conj().T @ np.diag(mask.numpy().reshape(-1).astype(float)) @ F
    return P.real, float(np.abs(P.imag).max())


def channel_projection(mask: torch.Tensor, channels: int) -> torch.Tensor:
    """The projection on ``(C, H, W)`` images, channel by channel: ``kron(I_C, P)``."""
    P, _ = projection(mask)
    return torch.from_numpy(np.kron(np.eye(channels), P))


def radii(h: int, w: int, kind: str) -> torch.Tensor:
    """The normalized radius of every DFT index, from ``torch.fft.fftfreq``."""
    fh = torch.fft.fftfreq(h, dtype=F64).abs()[:, None]
    fw = torch.fft.fftfreq(w, dtype=F64).abs()[None, :]
    r = (fh**2 + fw**2).sqrt() if kind == "radial" else torch.maximum(fh, fw)
    return r / r.max() if r.max() > 0 else r


def sphere_moments(W: torch.Tensor, P: torch.Tensor) -> tuple[float, float, int]:
    """Mean and variance of ``||W u||^2`` for ``u`` uniform on the unit sphere of ``range(P)``, and ``m``."""
    m = round(float(torch.trace(P)))
    B = W @ P @ W.T  # tr(A) = tr(W P W^T), tr(A^2) = ||W P W^T||_F^2
    t1, t2 = float(torch.trace(B)), float((B * B).sum())
    return t1 / m, 2 * (m * t2 - t1**2) / (m**2 * (m + 2)), m


class Dense(nn.Module):
    """``x -> W vec(x) + c``: a dense linear map on flattened images."""

    def __init__(self, W: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.W = nn.Parameter(W.clone())
        self.c = nn.Parameter(torch.zeros(W.shape[0], dtype=W.dtype) if bias is None else bias.clone())

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.c


# ----------------------------------------------------------------------------- masks


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), n_bands=st.integers(1, 6), kind=st.sampled_from(frequency.KINDS))
def test_masks_partition_the_grid_into_symmetric_bands_of_increasing_frequency(h, w, n_bands, kind):
    r = radii(h, w, kind)
    occupied = {min(int(math.floor(v * n_bands + 1e-7)), n_bands - 1) for v in r.flatten().tolist()}
    if len(occupied) < n_bands:  # the grid has too few distinct radii: an empty band is an error
        with pytest.raises(ValueError, match="n_bands"):
            frequency.band_masks((h, w), n_bands, kind=kind)
        return
    masks = frequency.band_masks((h, w), n_bands, kind=kind)
    assert masks.dtype == torch.bool and masks.shape == (n_bands, h, w)
    assert torch.equal(masks.sum(0), torch.ones(h, w, dtype=torch.int64))  # a partition
    flipped = masks[:, (-torch.arange(h)) % h][:, :, (-torch.arange(w)) % w]
    assert torch.equal(masks, flipped)  # symmetric under (k, l) -> (-k, -l)
    assert masks[0, 0, 0]  # the mean is in the lowest band
    for b in range(n_bands):
        inside = r[masks[b]]
        assert inside.min() >= b / n_bands - 1e-9 and inside.max() <= (b + 1) / n_bands + 1e-9
        if b + 1 < n_bands:
            assert inside.max() <= r[masks[b + 1]].min() + 1e-12  # increasing frequency


def test_square_bands_are_square_rings():
    # 9x9: |k| in {0, ..., 4}; ring level max(|k|, |l|) has radius level / 4; five bands, one ring each
    masks = frequency.band_masks(9, 5, kind="square")
    ring = torch.minimum(torch.arange(9), 9 - torch.arange(9))
    level = torch.maximum(ring[:, None], ring[None, :])
    for b in range(5):
        assert torch.equal(masks[b], level == b)


@pytest.mark.parametrize("size, n_bands, kind", [((4, 4), 3, "radial"), ((5, 6), 3, "square"), ((3, 8), 2, "radial")])
def test_band_projections_are_real_orthogonal_projections_of_rank_the_band_size(size, n_bands, kind):
    masks = frequency.band_masks(size, n_bands, kind=kind)
    n = size[0] * size[1]
    total = np.zeros((n, n))
    projections = []
    for mask in masks:
        P, imaginary = projection(mask)
        assert imaginary < 1e-12  # a symmetric band gives a real projection
        np.testing.assert_allclose(P, P.T, atol=1e-12)
        np.testing.assert_allclose(P @ P, P, atol=1e-12)
        assert abs(np.trace(P) - int(mask.sum())) < 1e-10  # rank |B_b|
        projections.append(P)
        total += P
    np.testing.assert_allclose(total, np.eye(n), atol=1e-12)
    for i in range(len(projections)):
        for j in range(i):
            np.testing.assert_allclose(projections[i] @ projections[j], 0, atol=1e-12)


def test_band_decompose_matches_the_dense_projections_and_parseval():
    x = torch.randn(3, 2, 5, 6, dtype=F64, generator=gen(1))
    parts = frequency.band_decompose(x, 3, kind="radial")
    assert parts.shape == (3, 3, 2, 5, 6) and parts.dtype == F64
    masks = frequency.band_masks((5, 6), 3)
    for b in range(3):
        P = channel_projection(masks[b], 2)
        expected = (x.flatten(1) @ P.T).reshape(x.shape)
        torch.testing.assert_close(parts[b], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(parts.sum(0), x, atol=1e-12, rtol=0)
    energies = parts.square().sum(dim=(2, 3, 4)).T  # (N, bands)
    torch.testing.assert_close(energies.sum(1), x.square().sum(dim=(1, 2, 3)), atol=1e-12, rtol=1e-12)  # Parseval
    fractions = frequency.band_energy(x, 3)
    torch.testing.assert_close(fractions, energies / energies.sum(1, keepdim=True), atol=1e-12, rtol=0)
    torch.testing.assert_close(fractions.sum(1), torch.ones(3, dtype=F64), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- noise


@pytest.mark.parametrize("kind", frequency.KINDS)
@pytest.mark.parametrize("band", [0, 1, 2])
def test_noise_is_real_unit_norm_and_band_limited(kind, band):
    d = frequency.bandlimited_noise((6, 2, 6, 7), band, 3, kind=kind, dtype=F64, generator=gen(band))
    assert d.dtype == F64 and not d.is_complex() and d.shape == (6, 2, 6, 7)
    torch.testing.assert_close(d.flatten(1).norm(dim=1), torch.ones(6, dtype=F64), atol=1e-13, rtol=0)
    mask = frequency.band_masks((6, 7), 3, kind=kind)[band]
    P = channel_projection(mask, 2)
    outside = d.flatten(1) - d.flatten(1) @ P.T  # (I - P) d
    assert float(outside.norm(dim=1).max()) < 1e-13


def test_noise_is_reproducible_and_leaves_the_global_generator_alone():
    before = torch.get_rng_state()
    a = frequency.bandlimited_noise((2, 1, 8, 8), 1, 3, generator=gen(5))
    b = frequency.bandlimited_noise((2, 1, 8, 8), 1, 3, generator=gen(5))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(a, frequency.bandlimited_noise((2, 1, 8, 8), 1, 3, generator=gen(6)))
    assert a.dtype == torch.get_default_dtype()


# ----------------------------------------------------------------------------- sensitivity


@pytest.mark.parametrize("kind", frequency.KINDS)
def test_linear_map_mean_square_sensitivity_matches_the_trace_formula(kind):
    c, h, w, n_bands = 2, 6, 6, 3
    W = torch.randn(5, c * h * w, dtype=F64, generator=gen(2))
    W[:, :h * w] *= 3.0  # unequal channels and a non-isotropic spectrum
    model = Dense(W, torch.randn(5, dtype=F64, generator=gen(3)))
    x = torch.rand(4, c, h, w, dtype=F64, generator=gen(4))
    n_samples = 300
    result = frequency.band_sensitivity(model, x, n_bands, eps=0.7, n_samples=n_samples, kind=kind,
                                        generator=gen(5), progress=False)
    assert result.samples.shape == (n_bands, 4, n_samples)
    norm = float(torch.linalg.matrix_norm(W, 2))
    masks = frequency.band_masks((h, w), n_bands, kind=kind)
    for b in range(n_bands):
        mean, var, m = sphere_moments(W, channel_projection(masks[b], c))
        assert m == c * int(masks[b].sum())
        se = math.sqrt(var / (4 * n_samples))
        assert abs(float(result.mean_square[b]) - mean) <= 5 * se, (b, float(result.mean_square[b]), mean, se)
        assert float(result.samples[b].max()) <= norm * (1 + 1e-12)  # every ratio <= ||W||_2
        assert float(result.mean[b]) <= math.sqrt(float(result.mean_square[b])) + 1e-15  # Jensen
    assert bool((result.stderr > 0).all())


def test_circular_convolution_sensitivity_is_the_band_average_of_its_transfer_function():
    h = w = 8
    conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular", bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.full((1, 1, 3, 3), 1.0 / 9.0, dtype=F64))  # a box blur: a low-pass filter
    grid = torch.zeros(h, w, dtype=F64)
    for i in range(3):
        for j in range(3):
            grid[(i - 1) % h, (j - 1) % w] = 1.0 / 9.0
    gain = torch.fft.fft2(grid).abs().square()  # |transfer function|^2 (the same for correlation)
    basis = torch.eye(h * w, dtype=F64).reshape(-1, 1, h, w)
    with torch.no_grad():
        W = conv(basis).reshape(h * w, h * w).T  # the dense operator, column j = conv(e_j)
    n_bands, n, n_samples = 4, 2, 400
    x = torch.rand(n, 1, h, w, dtype=F64, generator=gen(6))
    result = frequency.band_sensitivity(conv, x, n_bands, eps=0.3, n_samples=n_samples, generator=gen(7),
                                        progress=False)
    masks = frequency.band_masks(h, n_bands)
    expected = [float(gain[m].mean()) for m in masks]
    for b, m in enumerate(masks):
        mean, var, _ = sphere_moments(W, channel_projection(m, 1))
        assert abs(mean - expected[b]) < 1e-12  # trace formula = band average of |h|^2
        assert abs(float(result.mean_square[b]) - expected[b]) <= 5 * math.sqrt(var / (n * n_samples)) + 1e-15
    assert expected == sorted(expected, reverse=True)  # the blur passes low bands, damps high ones
    assert torch.all(result.mean[:-1] > result.mean[1:])
    assert float(result.samples.max()) <= float(gain.max().sqrt()) * (1 + 1e-12)  # Lip = max |h| = 1


@pytest.mark.parametrize("builder", ["lipschitz_cnn", "cnn"])
def test_sensitivity_never_exceeds_the_certified_constant(builder):
    if builder == "lipschitz_cnn":
        model = models.lipschitz_cnn(1, 3, input_size=8, channels=(4,), generator=gen(8))
    else:
        model = models.cnn(1, 3, input_size=8, channels=(4,), hidden=8, generator=gen(8))
    model = scramble_parameters(model.double(), scale=1.5, noise=0.3, generator=gen(9))
    bound = float(lipschitz.upper_bound(model, (1, 8, 8)))
    x = torch.rand(6, 1, 8, 8, dtype=F64, generator=gen(10))
    for eps in (1e-3, 1.0):
        result = frequency.band_sensitivity(model, x, 3, eps=eps, n_samples=4, generator=gen(11), progress=False)
        assert float(result.samples.max()) <= bound * (1 + 1e-9)
        assert bool((result.mean > 0).all())


def test_sensitivity_is_reproducible_restores_modes_and_casts_to_the_model_dtype():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    model.train()
    model[2].eval()  # a frozen BatchNorm inside a model in train mode
    flags = [m.training for m in model.modules()]
    x = torch.rand(5, 1, 8, 8, generator=gen(12))  # float32 images, float64 model
    before = torch.get_rng_state()
    a = frequency.band_sensitivity(model, x, 2, n_samples=3, generator=gen(13), progress=False)
    b = frequency.band_sensitivity(model, x, 2, n_samples=3, generator=gen(13), progress=False)
    assert torch.equal(a.samples, b.samples)  # dropout off (eval), same noise
    assert torch.equal(torch.get_rng_state(), before)
    assert [m.training for m in model.modules()] == flags
    assert a.mean.dtype == F64 and a.mean.device.type == "cpu"

    class Failing(nn.Module):
        calls = 0

        def forward(self, x):  # fails on the second call: inside the loop over the noise
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("planned failure")
            return x.flatten(1)

    broken = nn.Sequential(nn.Dropout(0.1), Failing()).train()
    with pytest.raises(RuntimeError, match="planned"):
        frequency.band_sensitivity(broken, x, 2, progress=False)
    assert all(m.training for m in broken.modules())


def test_standard_error_of_a_single_point_uses_the_draws():
    model = Dense(torch.randn(3, 16, dtype=F64, generator=gen(14)))
    x = torch.rand(1, 1, 4, 4, dtype=F64, generator=gen(15))
    result = frequency.band_sensitivity(model, x, 2, n_samples=10, generator=gen(16), progress=False)
    expected = result.samples[:, 0].std(dim=1) / math.sqrt(10)
    torch.testing.assert_close(result.stderr, expected)
    single = frequency.band_sensitivity(model, x, 2, n_samples=1, generator=gen(16), progress=False)
    assert bool(torch.isnan(single.stderr).all())


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_of_a_linear_classifier_matches_the_sphere_cap_probability():
    c, h, w, n_bands = 1, 8, 8, 3
    wvec = torch.randn(c * h * w, dtype=F64, generator=gen(17))
    model = Dense(torch.stack([wvec / 2, -wvec / 2]))  # logit difference <w, x>
    x = torch.randn(4, c, h, w, dtype=F64, generator=gen(18))
    x = x * torch.sign(x.flatten(1) @ wvec).reshape(-1, 1, 1, 1)  # all classified as 0
    margins = (x.flatten(1) @ wvec).numpy()
    y = torch.zeros(4, dtype=torch.int64)
    eps, n_samples = 3.0, 500
    result = frequency.bandlimited_accuracy(model, x, y, n_bands, eps=eps, n_samples=n_samples, generator=gen(19),
                                            progress=False)
    assert result.clean == 1.0
    masks = frequency.band_masks((h, w), n_bands)
    for b in range(n_bands):
        P = channel_projection(masks[b], c)
        m = round(float(torch.trace(P)))
        gain = float((P @ wvec).norm())  # <w, d> = |P w| u_1, (u_1 + 1)/2 ~ Beta((m-1)/2, (m-1)/2)
        s = margins / (eps * gain)
        p = np.where(s >= 1, 1.0, 1.0 - stats.beta.cdf((1 - np.minimum(s, 1)) / 2, (m - 1) / 2, (m - 1) / 2))
        se = math.sqrt(float(np.sum(p * (1 - p))) / n_samples) / len(p)
        assert abs(float(result.accuracy[b]) - p.mean()) <= 5 * se + 1e-12, (b, float(result.accuracy[b]), p.mean())
    none = frequency.bandlimited_accuracy(model, x, y, n_bands, eps=0.0, generator=gen(19), progress=False)
    torch.testing.assert_close(none.accuracy, torch.ones(n_bands, dtype=F64))


def test_noise_outside_the_bands_a_classifier_reads_changes_nothing():
    h = w = 8
    low = frequency.band_decompose(torch.randn(1, 1, h, w, dtype=F64, generator=gen(20)), 3)[0, 0].flatten()
    model = Dense(torch.stack([low, -low]))  # reads only band 0
    x = torch.randn(10, 1, h, w, dtype=F64, generator=gen(21))
    y = (x.flatten(1) @ low < 0).long()
    result = frequency.bandlimited_accuracy(model, x, y, 3, eps=100.0, n_samples=3, generator=gen(22), progress=False)
    assert result.clean == 1.0
    assert float(result.accuracy[1]) == 1.0 and float(result.accuracy[2]) == 1.0
    assert float(result.accuracy[0]) < 1.0  # eps = 100 swamps every margin in the band it reads


# ----------------------------------------------------------------------------- SNR


def test_white_noise_snr_matches_the_closed_form():
    c, h, w, n_bands, sigma, m_noise = 3, 8, 8, 4, 0.3, 400
    x = torch.rand(10, c, h, w, dtype=F64, generator=gen(23))
    noise = sigma * torch.randn(m_noise, c, h, w, dtype=F64, generator=gen(24))
    closed = frequency.spectral_snr(x, sigma, n_bands)
    sampled = frequency.spectral_snr(x, noise, n_bands)
    masks = frequency.band_masks(h, n_bands)
    signal = torch.stack([
        (x.flatten(1) @ channel_projection(mk, c).T).square().sum(1).mean() for mk in masks])
    sizes = masks.sum(dim=(1, 2)).to(F64)
    torch.testing.assert_close(closed, signal / (sigma**2 * c * sizes), atol=0, rtol=1e-12)
    # ||P_b n||^2 ~ sigma^2 chi^2(m_b): the sampled mean has relative error sqrt(2 / (m_b M))
    tolerance = 5 * torch.sqrt(2 / (c * sizes * m_noise))
    assert bool(((sampled / closed - 1).abs() <= tolerance).all())
    # white noise against white noise: the ratio of variances in every band
    white = frequency.spectral_snr(0.6 * torch.randn(m_noise, c, h, w, dtype=F64, generator=gen(25)), sigma, n_bands)
    assert bool(((white / 4.0 - 1).abs() <= tolerance).all())


def test_band_energy_of_smooth_images_sits_in_the_low_bands():
    t = torch.linspace(0, 2 * math.pi, 33, dtype=F64)[:-1]
    smooth = (torch.sin(t)[:, None] + torch.cos(t)[None, :]).expand(2, 3, 32, 32)  # frequency 1/32
    fractions = frequency.band_energy(smooth, 8)
    torch.testing.assert_close(fractions[:, 0], torch.ones(2, dtype=F64), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- arguments


def _model():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


X = torch.rand(2, 1, 8, 8)
Y = torch.tensor([0, 1])

BAD = [
    ("size", lambda: frequency.band_masks(0, 2)),
    ("size", lambda: frequency.band_masks((4, 4, 4), 2)),
    ("n_bands", lambda: frequency.band_masks(8, 0)),
    ("n_bands", lambda: frequency.band_masks(8, 2.0)),
    ("n_bands", lambda: frequency.band_masks(4, 9)),  # empty bands
    ("kind", lambda: frequency.band_masks(8, 2, kind="hexagonal")),
    ("device", lambda: frequency.band_masks(8, 2, device=3)),
    ("shape", lambda: frequency.bandlimited_noise((1, 8, 8), 0, 2)),
    ("shape", lambda: frequency.bandlimited_noise((1, 1, 0, 8), 0, 2)),
    ("band", lambda: frequency.bandlimited_noise((1, 1, 8, 8), 2, 2)),
    ("band", lambda: frequency.bandlimited_noise((1, 1, 8, 8), -1, 2)),
    ("dtype", lambda: frequency.bandlimited_noise((1, 1, 8, 8), 0, 2, dtype=torch.int64)),
    ("dtype", lambda: frequency.bandlimited_noise((1, 1, 8, 8), 0, 2, dtype="float32")),
    ("generator", lambda: frequency.bandlimited_noise((1, 1, 8, 8), 0, 2, generator=0)),
    ("x", lambda: frequency.band_decompose(torch.rand(8, 8), 2)),
    ("x", lambda: frequency.band_energy(torch.zeros(1, 1, 8, 8), 2)),
    ("x", lambda: frequency.band_energy(torch.full((1, 1, 8, 8), math.inf), 2)),
    ("x", lambda: frequency.band_energy(torch.ones(1, 1, 8, 8, dtype=torch.int64), 2)),
    ("model", lambda: frequency.band_sensitivity(lambda t: t, X, 2)),
    ("x", lambda: frequency.band_sensitivity(_model(), X[0], 2)),
    ("eps", lambda: frequency.band_sensitivity(_model(), X, 2, eps=0.0)),
    ("eps", lambda: frequency.band_sensitivity(_model(), X, 2, eps=math.nan)),
    ("n_samples", lambda: frequency.band_sensitivity(_model(), X, 2, n_samples=0)),
    ("progress", lambda: frequency.band_sensitivity(_model(), X, 2, progress="yes")),
    ("generator", lambda: frequency.band_sensitivity(_model(), X, 2, generator="seed")),
    ("eps", lambda: frequency.bandlimited_accuracy(_model(), X, Y, 2, eps=-1.0)),
    ("y", lambda: frequency.bandlimited_accuracy(_model(), X, Y.double(), 2)),
    ("y", lambda: frequency.bandlimited_accuracy(_model(), X, Y[:1], 2)),
    ("y", lambda: frequency.bandlimited_accuracy(_model(), X, Y + 5, 2)),
    ("y", lambda: frequency.bandlimited_accuracy(_model(), X, [0, 1], 2)),
    ("model", lambda: frequency.bandlimited_accuracy(nn.Identity(), X, Y, 2)),  # not logits (N, classes)
    ("noise", lambda: frequency.spectral_snr(X, torch.rand(3, 1, 8, 7), 2)),
    ("noise", lambda: frequency.spectral_snr(X, -1.0, 2)),
    ("noise", lambda: frequency.spectral_snr(X, "white", 2)),
    ("noise", lambda: frequency.spectral_snr(X, torch.full((2, 1, 8, 8), math.nan), 2)),
    ("x", lambda: frequency.spectral_snr(torch.rand(2, 8, 8), 0.1, 2)),
]


@pytest.mark.parametrize("name, call", BAD, ids=[f"{i}-{name}" for i, (name, _) in enumerate(BAD)])
def test_bad_arguments_raise_an_error_naming_them(name, call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert name in str(info.value), str(info.value)
