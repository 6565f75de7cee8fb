r"""Orthogonal layers: Cayley transform, skew orthogonal convolutions, block reflectors.

Every layer here applies a linear map :math:`Q` with orthonormal rows or columns (plus a bias),
so :math:`\|Q\|_2 = 1` whatever the parameters: the layers are 1-Lipschitz in L2 and, where
input and output have the same size, they preserve distances,
:math:`\|f(x) - f(y)\| = \|x - y\|`, and gradient norms.

* :class:`CayleyLinear`, :class:`CayleyConv2d`: :math:`Q = (I - A)(I + A)^{-1}` for a
  skew-symmetric :math:`A` [trockman2021orthogonalizing]; the convolution applies it to every
  frequency of a circular convolution [sedghi2019singular].
* :class:`SOCConv2d`: :math:`Q = \exp(L)` for a skew-symmetric convolution :math:`L`, computed
  by a truncated Taylor series whose truncation error is certified and divided out
  [singla2021skew].
* :class:`BROLinear`, :class:`BROConv2d`: the block reflector
  :math:`Q = I - 2 V (V^* V)^{-1} V^*`, symmetric and orthogonal, of low rank parameter
  :math:`V \in \mathbb{C}^{n \times k}` [lai2025enhancing].

Channel changes follow the papers: a layer with ``in != out`` works with square :math:`n \times n`
matrices, :math:`n = \max(\text{in}, \text{out})`, pads the input with zeros (an isometry) and
keeps the first ``out`` outputs (a projection), so its singular values are all 1 on the smaller
side. Stride ``s`` in the convolutions is an invertible downsampling (space-to-depth,
``pixel_unshuffle``: a permutation of the pixels, orthogonal) to ``in * s**2`` channels first.

No layer keeps state between calls (no power iteration): outputs are the same in training and
evaluation mode. The convolutions cache their per-frequency matrices (SOC: its rescaled kernel
or its transfer matrices) only in evaluation mode when no gradient with respect to the weight is
needed (grad mode off, or a frozen weight: input gradients still flow), keyed on the weight's values (compared with a stored copy), dtype, device,
the input size and the layer's settings, so any parameter update (including in-place ones
through ``weight.data``, which the version counter misses) or a new input size recomputes them;
the cache is bypassed while traced (``torch.compile``, ``torch.export``, ``meta`` tensors), where
the operator is computed from the parameters in the graph, with fixed iteration counts.
``export_module()`` returns plain torch modules computing the same function (``nn.Linear``, a
full-size circular ``nn.Conv2d``, or the fixed-weight :class:`TruncatedExpConv2d` for SOC).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab._checks import check_int, check_number, check_pair, check_positive
from stabilitylab.layers._bounds import cached_conv_bound
from stabilitylab.layers._common import _check_bool, _check_features, _check_image, _tracing, _Validated

__all__ = [
    "CayleyLinear",
    "CayleyConv2d",
    "SOCConv2d",
    "TruncatedExpConv2d",
    "BROLinear",
    "BROConv2d",
]


# ----------------------------------------------------------------------------- argument checks


def _check_eps(eps) -> float | None:
    return None if eps is None else check_positive(eps, "eps")


def _check_rank(rank, n: int) -> int:
    if rank is None:
        return max(1, n // 2)
    rank = check_int(rank, "rank", 1)
    if rank > n:
        raise ValueError(f"rank must be an int in [1, {n}] (n = max(in, out)), got {rank!r}")
    return rank


def _init_bias(bias: Tensor | None, fan_in: int) -> None:
    if bias is not None:
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(bias, -bound, bound)


def _frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# ----------------------------------------------------------------------------- shared algebra


def _cayley(A: Tensor) -> Tensor:
    r"""(I - A)(I + A)^{-1} = (I + A)^{-1}(I - A) (the factors commute) for skew A, batched.
    I + A is invertible: the eigenvalues of a skew-Hermitian A are imaginary, so those of I + A
    have modulus >= 1 and its condition number is sqrt(1 + ||A||^2)."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return torch.linalg.solve(eye + A, eye - A)


def _reflector_basis(V: Tensor, eps: float | None) -> Tensor:
    r"""U with U U^* = V (V^* V + s I)^{-1} V^*, s = eps * ||V||_F^2, for V (..., n, k), batched.

    Computed as the top block of Q in the QR factorization of the stacked (n + k) x k matrix
    [V; sqrt(s) I]: with [V; sqrt(s) I] = Q R, R^* R = V^* V + s I and V = Q_top R, so
    Q_top = V R^{-1} and Q_top Q_top^* = V (V^*V + sI)^{-1} V^*. The stacked matrix always has
    full column rank, whatever the rank of V (so the factorization and its gradient are
    defined), and since Q has orthonormal columns, Q_top^* Q_top = I - Q_bot^* Q_bot has all its
    eigenvalues in [0, 1] up to the rounding of Householder QR (a few units of machine
    precision, independently of the conditioning of V). Hence I - 2 U U^* is Hermitian with
    eigenvalues in [-1, 1]: 1-Lipschitz for every V, and orthogonal, up to a relative 2 s /
    sigma_min(V)^2, when V has full rank. V is first divided by its largest entry (for complex V
    the largest real or imaginary part; detached: the projector does not depend on the scale of
    V) so that nothing under- or overflows; norms are taken of real views (complex norms are
    slow on CPU).
    """
    dtype = V.real.dtype if V.is_complex() else V.dtype
    finfo = torch.finfo(dtype)
    eps = finfo.eps if eps is None else eps
    k = V.shape[-1]
    flat = torch.view_as_real(V) if V.is_complex() else V  # real views: complex norms are slow on CPU
    dims = (-3, -2, -1) if V.is_complex() else (-2, -1)
    peak = flat.detach().abs().amax(dim=dims, keepdim=True).clamp_min(finfo.tiny)
    if V.is_complex():
        peak = peak[..., 0]
    V = V / peak
    flat = torch.view_as_real(V) if V.is_complex() else V
    root = math.sqrt(eps) * torch.linalg.vector_norm(flat, dim=dims) + math.sqrt(finfo.tiny)
    eye = torch.eye(k, dtype=V.dtype, device=V.device)
    stacked = torch.cat([V, root[..., None, None] * eye], dim=-2)
    Q = torch.linalg.qr(stacked, mode="reduced").Q
    return Q[..., : V.shape[-2], :]


def _exp_tail(s: Tensor, n_terms: int, s_max: float) -> Tensor:
    r"""Certified :math:`\sum_{j > K} s^j / j!` for a tensor :math:`0 \le s \le s_{\max}`: the
    terms :math:`K+1, \dots, K+J` summed, plus :math:`t_{K+J} \frac{s}{K+J+1} / (1 - q)`,
    :math:`q = \frac{s}{K+J+2} \le \frac12`, which bounds the rest (each further term is at
    most :math:`q` times the previous one). Every operation is a product, quotient or sum of
    nonnegative numbers, each rounded with relative error at most :math:`u` (the unit roundoff
    of ``s``'s dtype), so the computed value is within a factor :math:`(1 + u)^{m}` of the exact
    one, :math:`m \le 3(K + J) + 8` operations on the longest path; the result is multiplied
    by :math:`1 + 4(K + J + 3)\,\epsilon` (:math:`\epsilon = 2u`, machine epsilon) to stay an
    upper bound in floating point. Tensor operations only (no host sync)."""
    term = torch.ones_like(s)
    for j in range(1, n_terms + 1):
        term = term * s / j
    n_extra = max(24, math.ceil(2 * s_max))
    tail = torch.zeros_like(s)
    for j in range(n_terms + 1, n_terms + n_extra + 1):
        term = term * s / j
        tail = tail + term
    last = n_terms + n_extra
    margin = 1 + 4 * (last + 3) * torch.finfo(s.dtype).eps
    return (tail + term * s / (last + 1) / (1 - s / (last + 2))) * margin


# ----------------------------------------------------------------------------- dense layers


class _OrthogonalLinear(_Validated, nn.Module):
    """Shared parts of the orthogonal dense layers: the bias, the forward, the export."""

    lipschitz_constant = 1.0

    def __init__(self, in_features: int, out_features: int, bias: bool, device, dtype) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features")
        self.out_features = check_int(out_features, "out_features")
        _check_bool(bias, "bias")
        self.size = max(in_features, out_features)
        factory = {"device": device, "dtype": dtype}
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)

    def _square(self) -> Tensor:  # the n x n orthogonal matrix
        raise NotImplementedError

    def orthogonal_weight(self) -> Tensor:
        """The matrix applied, ``(out_features, in_features)``: the top-left block of an
        ``n x n`` orthogonal matrix, ``n = max(in_features, out_features)`` (orthonormal rows
        when ``out <= in``, orthonormal columns when ``out >= in``)."""
        return self._square()[: self.out_features, : self.in_features]

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.in_features, type(self).__name__)
        self._validate_eval(x)
        return F.linear(x, self.orthogonal_weight(), self.bias)

    def export_module(self) -> nn.Linear:
        """An ``nn.Linear`` holding a frozen copy of :meth:`orthogonal_weight` (and the bias):
        the same function without the orthogonalization at every call.

        Raises:
            ValueError: non-finite parameters."""
        self.check_parameters()
        weight = self.orthogonal_weight().detach()
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return _frozen(linear)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class CayleyLinear(_OrthogonalLinear):
    r"""A dense layer whose weight is the Cayley transform of a skew-symmetric matrix.

    With a trainable :math:`V \in \mathbb{R}^{n \times n}`, :math:`n = \max(\text{in},
    \text{out})`, :math:`A = V - V^\top` is skew-symmetric and

    .. math:: Q = (I - A)(I + A)^{-1}

    is orthogonal [trockman2021orthogonalizing]: :math:`I + A` is invertible (the eigenvalues
    :math:`i\lambda` of :math:`A` are imaginary), :math:`(I - A)` and :math:`(I + A)^{-1}`
    commute, and :math:`Q^\top Q = (I - A)^{-1}(I + A)(I - A)(I + A)^{-1} = I`. The layer computes
    :math:`x \mapsto Q_{:\text{out}, :\text{in}}\, x + b` (the top-left block: zero-padded input,
    first ``out`` outputs), whose singular values are all 1: orthonormal rows when
    ``out <= in``, orthonormal columns when ``out >= in``. So it is 1-Lipschitz for every
    :math:`V`, exactly (``lipschitz_constant = 1``), and norm-preserving when ``out >= in``.
    :math:`Q` is obtained with ``torch.linalg.solve``, never an explicit inverse; the Cayley map
    reaches every orthogonal matrix without the eigenvalue -1.

    Shapes: input ``(..., in_features)``, output ``(..., out_features)``; parameter ``weight``
    is :math:`V`, ``(n, n)``.

    Args:
        in_features, out_features, bias, device, dtype: as :class:`torch.nn.Linear`.

    Raises:
        ValueError: feature counts that are not ints >= 1.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.weight = nn.Parameter(torch.empty(self.size, self.size, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.5 / math.sqrt(self.size))
        _init_bias(self.bias, in_features)

    def _square(self) -> Tensor:
        return _cayley(self.weight - self.weight.mT)


class BROLinear(_OrthogonalLinear):
    r"""A dense layer whose weight is a block reflector of low-rank parameter.

    With a trainable :math:`V \in \mathbb{R}^{n \times k}`, :math:`n = \max(\text{in},
    \text{out})`, :math:`k` = ``rank``,

    .. math:: Q = I - 2 V (V^\top V)^{-1} V^\top

    is the reflection through the orthogonal complement of the column space of :math:`V`
    [lai2025enhancing]: :math:`P = V (V^\top V)^{-1} V^\top` is the orthogonal projector on it,
    so :math:`Q = I - 2P` is symmetric with :math:`Q^2 = I - 4P + 4P^2 = I`, hence orthogonal
    (eigenvalue -1 with multiplicity :math:`k`, +1 otherwise), with no iterative approximation.
    The layer computes :math:`x \mapsto Q_{:\text{out}, :\text{in}}\, x + b` (all singular
    values 1, as :class:`CayleyLinear`).

    Rank-deficient :math:`V` (where :math:`V^\top V` is singular) is handled by a ridge:
    :math:`P_s = V (V^\top V + sI)^{-1} V^\top` with :math:`s = \varepsilon \|V\|_F^2`, computed
    from the QR factorization of :math:`[V;\ \sqrt{s} I]` (whose top block of Q is a square root
    of :math:`P_s`, see ``_reflector_basis``). :math:`P_s` has eigenvalues
    :math:`\sigma_i^2 / (\sigma_i^2 + s) \in [0, 1)`, so :math:`I - 2P_s` is symmetric with
    eigenvalues in :math:`(-1, 1]`: 1-Lipschitz for **every** :math:`V`, including rank-deficient
    and zero ones (then :math:`Q = I` on the missing directions), and orthogonal up to a relative
    :math:`2s/\sigma_{\min}(V)^2` when :math:`V` has full rank. The default :math:`\varepsilon`
    is the machine epsilon of the weight's dtype, so full-rank :math:`V` give orthogonal
    matrices to rounding error. ``lipschitz_constant = 1``.

    Shapes: input ``(..., in_features)``, output ``(..., out_features)``; parameter ``weight``
    is :math:`V`, ``(n, rank)``.

    Args:
        in_features, out_features, bias, device, dtype: as :class:`torch.nn.Linear`.
        rank: :math:`k`, the number of reflected directions, in ``[1, n]`` (default ``n // 2``;
            ``rank = n`` gives :math:`Q = -I`).
        eps: the relative ridge :math:`\varepsilon > 0` (default: machine epsilon).

    Raises:
        ValueError: bad feature counts, ``rank`` or ``eps``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rank: int | None = None,
        eps: float | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.rank = _check_rank(rank, self.size)
        self.eps = _check_eps(eps)
        self.weight = nn.Parameter(torch.empty(self.size, self.rank, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=1 / math.sqrt(self.size))
        _init_bias(self.bias, in_features)

    def _square(self) -> Tensor:
        U = _reflector_basis(self.weight, self.eps)
        eye = torch.eye(self.size, dtype=U.dtype, device=U.device)
        return eye - 2 * (U @ U.mT)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}" + (f", eps={self.eps}" if self.eps is not None else "")


# ----------------------------------------------------------------------------- convolutions


class _OrthogonalConv(_Validated, nn.Module):
    """Shared parts of the orthogonal convolutions: argument checks, invertible downsampling,
    channel padding and slicing, bias, the evaluation-mode cache, the input size for export."""

    lipschitz_constant = 1.0

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size, stride: int, bias: bool, device, dtype
    ) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels")
        self.out_channels = check_int(out_channels, "out_channels")
        self.kernel_size = check_pair(kernel_size, "kernel_size", 1)
        self.stride = check_int(stride, "stride")
        _check_bool(bias, "bias")
        #: channels after the space-to-depth downsampling
        self.downsampled_channels = in_channels * stride**2
        #: side of the square orthogonal operator per pixel / frequency
        self.channels = max(self.downsampled_channels, out_channels)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self._last_input_size: tuple[int, int] | None = None
        self._cache = None

    # -- sizes

    def _grid(self, input_size, name: str = "input_size") -> tuple[int, int]:
        """The image size after the downsampling, checked (``name``: what to call the size in
        errors, ``"x"`` for an input)."""
        h, w = check_pair(input_size, name, 1)
        s = self.stride
        if h % s or w % s:
            raise ValueError(
                f"{type(self).__name__}: {name} must have H and W divisible by the stride {s}, got the size {(h, w)}"
            )
        return h // s, w // s

    def _export_size(self, input_size) -> tuple[int, int]:
        if input_size is None:
            if self._last_input_size is None:
                raise ValueError(
                    f"{type(self).__name__}.export_module needs the input size: pass input_size=(h, w) "
                    "or run the layer on an input first"
                )
            return self._last_input_size
        return check_pair(input_size, "input_size", 1)

    # -- forward helpers

    def _prepare(self, x: Tensor) -> tuple[Tensor, bool]:
        size = _check_image(x, self.in_channels, type(self).__name__)
        self._check_grid(self._grid(size, "x"))
        self._validate_eval(x)
        unbatched = x.ndim == 3
        if unbatched:
            x = x.unsqueeze(0)
        self._last_input_size = size
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        return x, unbatched

    def _pad_channels(self, x: Tensor, channels: int) -> Tensor:
        return F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1])) if x.shape[1] < channels else x

    def _finish(self, y: Tensor, unbatched: bool) -> Tensor:
        y = y[:, : self.out_channels]
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return y.squeeze(0) if unbatched else y

    def _cache_key(self, grid: tuple[int, int]) -> tuple:
        """Everything besides the weight's values that the cached tensors depend on."""
        settings = tuple(getattr(self, name, None) for name in ("eps", "max_norm", "n_terms", "n_iter", "padding", "rank"))
        return (tuple(grid), self.kernel_size, self.stride, self.in_channels, self.out_channels, settings)

    def _check_grid(self, grid: tuple[int, int]) -> None:
        """Conditions on the (downsampled) image size; none by default."""

    def _cached(self, grid: tuple[int, int], compute, tag: str = ""):
        """compute() in training mode, when autograd needs the weight's gradient (grad mode on
        and ``weight.requires_grad``), or while traced (``torch.compile``, ``torch.export``,
        ``meta`` tensors: the comparison below reads values, and a traced graph must compute the
        operator from its inputs); otherwise its cached value (one slot per ``tag``: what is
        cached), recomputed unless the weight has the same dtype, device, shape and *values* as
        when it was cached (compared entry by entry with a stored copy, which costs one pass over
        the weight) and the grid and settings are the same. Comparing values rather than the
        version counter catches every way of changing a parameter: optimizer steps,
        ``load_state_dict``, ``.to()``, and in-place updates through ``weight.data``, which bypass
        the counter. In evaluation mode with a frozen weight and grad mode on, the cached tensors
        (which carry no graph) still pass gradients to the input."""
        needs_graph = torch.is_grad_enabled() and self.weight.requires_grad
        if self.training or needs_graph or _tracing(self.weight):
            if not _tracing(self.weight):
                self._cache = None
            return compute()
        w = self.weight.detach()
        key = self._cache_key(grid)
        slots = self._cache if isinstance(self._cache, dict) else {}

        def valid(slot) -> bool:
            return (
                slot[0] == key
                and slot[1].dtype == w.dtype
                and slot[1].device == w.device
                and slot[1].shape == w.shape
                and torch.equal(slot[1], w)
            )

        cache = slots.get(tag)
        if cache is not None and valid(cache):
            return cache[2]
        with torch.no_grad():
            value = compute()
        slots = {name: slot for name, slot in slots.items() if valid(slot)}
        slots[tag] = (key, w.clone(), value)
        self._cache = slots
        return value

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None  # copies and pickles recompute
        return state

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        )
        return text + ("" if self.bias is not None else ", bias=False")


class _FourierConv(_OrthogonalConv):
    """Circular convolutions applied per frequency: y^(f) = Q(f) x^(f) on the half spectrum."""

    def _check_grid(self, grid: tuple[int, int]) -> None:
        kh, kw = self.kernel_size
        if kh > grid[0] or kw > grid[1]:
            raise ValueError(
                f"{type(self).__name__}: the (downsampled) size {grid} of x is smaller than the kernel "
                f"{self.kernel_size}: the circular convolution would wrap the kernel around itself"
            )

    def _kernel_spectrum(self, grid: tuple[int, int]) -> Tensor:
        """The DFT of the weight on the grid, half spectrum: ``(h, w // 2 + 1, c, d)``."""
        self._check_grid(grid)
        return torch.fft.rfft2(self.weight, s=grid).permute(2, 3, 0, 1)

    def frequency_matrices(self, input_size) -> Tensor:
        r"""The matrices :math:`Q(u, v)` applied at every frequency of the (downsampled) input,
        restricted to ``(out_channels, in_channels * stride**2)`` (zero-padded inputs, first
        outputs): complex ``(h', w' // 2 + 1, out, in * s^2)`` with ``h' = h / s``. Their
        singular values are those of the layer's linear part [sedghi2019singular]."""
        raise NotImplementedError

    def export_module(self, input_size=None) -> nn.Module:
        r"""Plain torch modules computing the same function on inputs of size ``input_size``
        (default: the size of the last input the layer saw): ``nn.PixelUnshuffle`` when
        ``stride > 1``, then an ``nn.Conv2d`` with ``padding="same"``,
        ``padding_mode="circular"`` and a kernel as large as the (downsampled) image, whose
        weights are the inverse DFT of :meth:`frequency_matrices` (frozen). Valid only for that
        input size, stored in the conv's ``exported_input_size`` attribute: the operator
        depends on the size of the circle it convolves on.
        """
        self.check_parameters()
        h, w = self._export_size(input_size)
        grid = self._grid((h, w))
        with torch.no_grad():
            blocks = self.frequency_matrices((h, w)).permute(2, 3, 0, 1)  # (out, in', u, v)
            spatial = torch.fft.irfft2(blocks, s=grid)  # y = sum_b spatial[b] x[a - b] (circular)
            # cross-correlation kernel of Conv2d(padding="same"): it pads (k - 1) // 2 before, so
            # tap p reads x[a + p - (k - 1) // 2], i.e. offset b = (k - 1) // 2 - p.
            rows = ((grid[0] - 1) // 2 - torch.arange(grid[0], device=spatial.device)) % grid[0]
            cols = ((grid[1] - 1) // 2 - torch.arange(grid[1], device=spatial.device)) % grid[1]
            kernel = spatial[:, :, rows][:, :, :, cols]
        conv = nn.Conv2d(
            self.downsampled_channels,
            self.out_channels,
            grid,
            padding="same",
            padding_mode="circular",
            bias=self.bias is not None,
            device=kernel.device,
            dtype=kernel.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(kernel)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        conv.exported_input_size = (h, w)
        _frozen(conv)
        if self.stride == 1:
            return conv
        return nn.Sequential(nn.PixelUnshuffle(self.stride), conv)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", padding=circular"


class CayleyConv2d(_FourierConv):
    r"""An orthogonal circular convolution: the Cayley transform at every frequency.

    A circular convolution is block-diagonalized by the 2-D DFT: at every frequency
    :math:`(u, v)` of an :math:`h \times w` image it multiplies the transformed channels by
    :math:`\hat V(u, v) = \sum_{p,q} V_{:,:,p,q} e^{-2\pi i (pu/h + qv/w)}`
    [sedghi2019singular]. With :math:`\hat A = \hat V - \hat V^*` (skew-Hermitian: the DFT of
    the convolution minus its adjoint) the layer applies

    .. math:: \hat Q(u, v) = (I - \hat A(u, v))\,(I + \hat A(u, v))^{-1},

    unitary at every frequency, so the convolution it defines is orthogonal
    [trockman2021orthogonalizing]. Since :math:`V` is real,
    :math:`\hat Q(-u, -v) = \overline{\hat Q(u, v)}` and the output is real: only the half
    spectrum is computed (``rfft2`` / ``irfft2``), with one batched ``torch.linalg.solve`` of
    ``n x n`` complex systems per frequency. The Cayley convolution is not a small-kernel
    convolution: its spatial kernel covers the whole image (see ``export_module()``).

    Channels: input zero-padded to :math:`n = \max(\text{in}\,s^2, \text{out})` channels, first
    ``out`` outputs kept; stride ``s`` by invertible downsampling first. Singular values all 1 on
    the smaller side (norm-preserving when ``out >= in * s**2``); ``lipschitz_constant = 1``.

    Shapes: input ``(N, in, H, W)`` or ``(in, H, W)`` with ``H, W`` divisible by ``s`` and
    ``H/s, W/s`` at least the kernel size; output ``(N, out, H/s, W/s)``; parameter ``weight``
    ``(n, n, kh, kw)``.

    Args:
        in_channels, out_channels, kernel_size, stride, bias, device, dtype: as
            :class:`torch.nn.Conv2d` (``stride`` an int).
        padding: only ``"circular"``.

    Raises:
        ValueError: bad sizes, padding other than ``"circular"``; at call time a channel
            count, or an image size the stride does not divide or smaller than the kernel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride: int = 1,
        padding: str = "circular",
        bias: bool = True,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, device, dtype)
        if padding != "circular":
            raise ValueError(f"padding must be 'circular' (the Cayley transform is taken per frequency), got {padding!r}")
        n, (kh, kw) = self.channels, self.kernel_size
        self.weight = nn.Parameter(torch.empty(n, n, kh, kw, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.5 / math.sqrt(n * kh * kw))
        _init_bias(self.bias, self.downsampled_channels * kh * kw)

    def _blocks(self, grid: tuple[int, int]) -> Tensor:
        V = self._kernel_spectrum(grid)
        Q = _cayley(V - V.mH)
        return Q[..., : self.out_channels, : self.downsampled_channels]

    def frequency_matrices(self, input_size) -> Tensor:
        return self._blocks(self._grid(input_size))

    def forward(self, x: Tensor) -> Tensor:
        x, unbatched = self._prepare(x)
        grid = x.shape[-2:]
        grid = (grid[0], grid[1])
        Q = self._cached(grid, lambda: self._blocks(grid))
        y = torch.einsum("uvoi,biuv->bouv", Q, torch.fft.rfft2(x))
        return self._finish(torch.fft.irfft2(y, s=grid), unbatched)


class BROConv2d(_FourierConv):
    r"""An orthogonal circular convolution: a block reflector at every frequency.

    With a trainable kernel :math:`V` of shape ``(n, rank, kh, kw)`` and its DFT
    :math:`\hat V(u, v) \in \mathbb{C}^{n \times k}` on the input grid (see
    :class:`CayleyConv2d`), the layer applies at every frequency

    .. math:: \hat Q(u, v) = I - 2 \hat V (\hat V^* \hat V)^{-1} \hat V^*,

    the reflection through the orthogonal complement of the column space of :math:`\hat V`:
    Hermitian and unitary, so the convolution is orthogonal [lai2025enhancing]. Real
    :math:`V` gives :math:`\hat Q(-u,-v) = \overline{\hat Q(u,v)}` and a real output; only the
    half spectrum is computed. The layer never forms :math:`\hat Q`: it applies
    :math:`x \mapsto x - 2 U (U^* x)` with an :math:`n \times k` factor :math:`U`
    (:math:`U U^* = \hat V(\hat V^*\hat V + sI)^{-1}\hat V^*`), :math:`O(nk)` per frequency.

    Rank-deficient :math:`\hat V(u, v)` (at some frequency, the columns of a kernel's DFT can be
    dependent: a zero kernel, repeated filters, a zero of the transfer function) are handled
    as in :class:`BROLinear` by a relative ridge :math:`s = \varepsilon \|\hat V(u,v)\|_F^2`
    through a QR factorization: every :math:`\hat Q(u, v)` stays Hermitian with eigenvalues in
    :math:`[-1, 1]`, so the layer is 1-Lipschitz for every kernel, and unitary (to rounding)
    wherever :math:`\hat V` has full rank.

    Channels: input zero-padded to :math:`n = \max(\text{in}\,s^2, \text{out})` channels, first
    ``out`` outputs kept; stride ``s`` by invertible downsampling. ``lipschitz_constant = 1``.

    Shapes: input ``(N, in, H, W)`` or ``(in, H, W)``, ``H/s, W/s`` at least the kernel size;
    output ``(N, out, H/s, W/s)``; parameter ``weight`` ``(n, rank, kh, kw)``.

    Args:
        in_channels, out_channels, kernel_size, stride, bias, device, dtype: as
            :class:`torch.nn.Conv2d` (``stride`` an int).
        padding: only ``"circular"``.
        rank: :math:`k` in ``[1, n]``, default ``n // 2``.
        eps: relative ridge (default: machine epsilon of the weight's dtype).

    Raises:
        ValueError: bad sizes, ``rank``, ``eps``, a padding other than ``"circular"``; at call
            time a channel count or an image size that does not fit.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride: int = 1,
        padding: str = "circular",
        bias: bool = True,
        *,
        rank: int | None = None,
        eps: float | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, device, dtype)
        if padding != "circular":
            raise ValueError(f"padding must be 'circular' (the reflector is taken per frequency), got {padding!r}")
        self.rank = _check_rank(rank, self.channels)
        self.eps = _check_eps(eps)
        n, (kh, kw) = self.channels, self.kernel_size
        self.weight = nn.Parameter(torch.empty(n, self.rank, kh, kw, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=1 / math.sqrt(n * kh * kw))
        _init_bias(self.bias, self.downsampled_channels * kh * kw)

    def _factor(self, grid: tuple[int, int]) -> Tensor:
        return _reflector_basis(self._kernel_spectrum(grid), self.eps)

    def frequency_matrices(self, input_size) -> Tensor:
        U = self._factor(self._grid(input_size))
        eye = torch.eye(self.channels, dtype=U.dtype, device=U.device)
        Q = eye - 2 * (U @ U.mH)
        return Q[..., : self.out_channels, : self.downsampled_channels]

    def forward(self, x: Tensor) -> Tensor:
        x, unbatched = self._prepare(x)
        grid = (x.shape[-2], x.shape[-1])
        U = self._cached(grid, lambda: self._factor(grid))
        xf = torch.fft.rfft2(x)  # (b, in', u, v)
        t = torch.einsum("uvik,biuv->bkuv", U[..., : self.downsampled_channels, :].conj(), xf)
        reflected = torch.einsum("uvok,bkuv->bouv", U[..., : self.out_channels, :], t)
        y = self._pad_channels(xf, self.out_channels)[:, : self.out_channels] - 2 * reflected
        return self._finish(torch.fft.irfft2(y, s=grid), unbatched)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}" + (f", eps={self.eps}" if self.eps is not None else "")


# ----------------------------------------------------------------------------- SOC


_SOC_PADDINGS = ("same", "zeros", "circular")


def _skew_kernel(M: Tensor) -> Tensor:
    r"""The kernel of conv(M) - conv(M)^T: the adjoint of a stride-1 same-size convolution (odd
    kernel, zero or circular padding) is the convolution with the channel-transposed, spatially
    flipped kernel."""
    return M - M.transpose(0, 1).flip(-2, -1)


def _conv_same(x: Tensor, kernel: Tensor, circular: bool) -> Tensor:
    kh, kw = kernel.shape[-2:]
    if circular:
        return F.conv2d(F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="circular"), kernel)
    return F.conv2d(x, kernel, padding=(kh // 2, kw // 2))


def _exp_series(x: Tensor, kernel: Tensor, n_terms: int, circular: bool, scale: Tensor) -> Tensor:
    r""":math:`\text{scale} \cdot \sum_{j=0}^{K} L^j x / j!` with L the same-size convolution."""
    y = term = x
    for j in range(1, n_terms + 1):
        term = _conv_same(term, kernel, circular) / j
        y = y + term
    return y * scale


def _transfer_matrices(kernel: Tensor, grid: tuple[int, int]) -> Tensor:
    r"""The matrices of the circular same-size convolution by ``kernel`` ``(n, n, kh, kw)`` (odd
    sizes, cross-correlation centred as ``_conv_same``) at every frequency of the half spectrum
    of an ``h x w`` grid (at least the kernel): complex ``(h * (w // 2 + 1), n, n)``. Tap
    :math:`p` reads :math:`x[a + p - c]`, :math:`c = k // 2`: it is the convolution (in the
    DFT's sense) by the array holding tap :math:`p` at offset :math:`c - p` (mod the grid), whose
    DFT the result is."""
    kh, kw = kernel.shape[-2:]
    h, w = grid
    spread = F.pad(kernel.flip(-2, -1), (0, w - kw, 0, h - kh))
    spread = torch.roll(spread, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    n_out, n_in = kernel.shape[:2]
    return torch.fft.rfft2(spread).reshape(n_out, n_in, -1).permute(2, 0, 1)


def _exp_matrices(L: Tensor, n_terms: int, scale: Tensor) -> Tensor:
    r""":math:`\text{scale} \cdot \sum_{j=0}^{K} L^j / j!` for a batch of square matrices, by
    Horner's rule :math:`I + L(I + \frac{L}{2}(\cdots(I + \frac{L}{K})))` (K - 1 products)."""
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
    P = eye + L / n_terms
    for j in range(n_terms - 1, 0, -1):
        P = eye + (L @ P) / j
    return P * scale


def _apply_spectral(x: Tensor, T: Tensor, out: int) -> Tensor:
    """``irfft2(T(f) rfft2(x)(f))``: x real ``(b, d, h, w)``, T ``(h * (w // 2 + 1), out, d)``."""
    b, d, h, w = x.shape
    X = torch.fft.rfft2(x).reshape(b, d, -1).permute(2, 1, 0)  # (f, d, b)
    Y = (T @ X).permute(2, 1, 0).reshape(b, out, h, w // 2 + 1)
    return torch.fft.irfft2(Y, s=(h, w))


def _soc_prefers_spectrum(batch: int, n: int, d: int, out: int, grid: tuple[int, int], kernel_size, n_terms: int) -> bool:
    r"""Whether the series on the transfer matrices costs fewer multiply-adds than the series on
    the activations, per call (forward; the backward scales alike). Activations: K convolutions,
    :math:`K b n^2 h w\, k_h k_w`. Spectrum: the kernel's DFT, K - 1 complex products of
    :math:`n \times n` matrices and one of the batch at every one of the :math:`f = h(w/2 + 1)`
    frequencies (4 real multiply-adds per complex one), and two real FFTs of the batch
    (:math:`\approx 2.5\, hw \log_2(hw)` per image)."""
    h, w = grid
    kh, kw = kernel_size
    freqs = h * (w // 2 + 1)
    activations = n_terms * batch * n * n * h * w * kh * kw
    fft = 2.5 * h * w * max(1.0, math.log2(h * w))
    spectrum = 4 * freqs * ((n_terms - 1) * n**3 + batch * out * d) + fft * (n * n + batch * (d + out))
    return spectrum < activations


class SOCConv2d(_OrthogonalConv):
    r"""Skew orthogonal convolution: the exponential of a skew-symmetric convolution.

    With a trainable kernel :math:`M` (``(n, n, kh, kw)``, odd sizes) and the same-size stride-1
    convolution :math:`\mathrm{conv}_M` (zero or circular padding), the operator
    :math:`L = \mathrm{conv}_M - \mathrm{conv}_M^\top = \mathrm{conv}_S`,
    :math:`S = M - \operatorname{flip}(M^\top)`, is skew-symmetric, so :math:`\exp(L)` is
    orthogonal: :math:`\exp(L)^\top \exp(L) = \exp(-L)\exp(L) = I` [singla2021skew]. The layer
    evaluates the Taylor series truncated after :math:`K` = ``n_terms`` terms,
    :math:`T_K(L)\,x = \sum_{j=0}^{K} L^j x / j!` (K convolutions), with two safeguards:
    (with circular padding, when it costs fewer multiply-adds, e.g. small images and large
    batches, the same series is summed on the transfer matrices instead: :math:`L` is the
    product by :math:`\hat S(f)` at every frequency of the half spectrum, so
    :math:`T_K(L) = \mathcal F^{-1} T_K(\hat S(f)) \mathcal F`, K - 1 products of
    :math:`n \times n` matrices per frequency and one with the batch; the same operator, so
    the accounting below holds unchanged. Zero padding always uses the convolutions: the
    composition of zero-padded convolutions is not a zero-padded convolution.)

    * **Rescaling**, computed at every call since it depends on the input size :math:`h \times
      w`: :math:`\hat s \ge \|\mathrm{conv}_S\|_2` is the certified Gram-iteration bound
      (``n_iter`` fixed steps, as :class:`~stabilitylab.layers.SpectralConv2d`) on that size
      [delattre2024spectral] (for zero padding, the bound of a circular convolution on a
      larger grid that contains it), and :math:`S` is replaced by :math:`S \cdot \min(1, \rho / \hat s)`, :math:`\rho` =
      ``max_norm``, so that :math:`\|L\|_2 \le s := \min(\hat s, \rho)`. Differentiable.
    * **Truncation**: :math:`T_K(L) = \exp(L) - R_K` with
      :math:`\|R_K\| \le \sum_{j>K} \|L\|^j/j! \le \tau := \sum_{j>K} s^j/j!`, so the singular
      values of :math:`T_K(L)` lie in :math:`[1 - \tau, 1 + \tau]`. The output is divided by
      :math:`1 + \tau`: the layer's constant is certified :math:`\le 1` whatever :math:`M` and
      :math:`K` (``lipschitz_constant = 1``), its singular values lie in
      :math:`[(1 - \tau)/(1 + \tau), 1]`. With the defaults (:math:`\rho = 1`, :math:`K = 10`)
      :math:`\tau < 3 \cdot 10^{-8}`: orthogonal to that precision; with few terms or a large
      ``max_norm`` the layer is noticeably contracting (e.g. :math:`\rho = 1, K = 4`:
      :math:`\tau \approx 0.0099`), never expanding.

    Channels: :math:`n = \max(\text{in}\,s^2, \text{out})`; input zero-padded to :math:`n`
    channels, first ``out`` outputs kept; stride by invertible downsampling (space-to-depth).

    Shapes: input ``(N, in, H, W)`` or ``(in, H, W)`` (``H, W`` divisible by the stride);
    output ``(N, out, H/s, W/s)``; parameter ``weight`` is :math:`M`, ``(n, n, kh, kw)``.

    Args:
        in_channels, out_channels, kernel_size, stride, bias, device, dtype: as
            :class:`torch.nn.Conv2d` (``stride`` an int, odd kernel sizes).
        padding: ``"same"`` or ``"zeros"`` (``k // 2`` zeros each side, or that int), or
            ``"circular"``.
        n_terms: :math:`K >= 1`, the number of convolutions of the series.
        max_norm: :math:`\rho \in (0, 8]`, the largest :math:`\|L\|_2` allowed (the largest
            rotation angle of the exponential; beyond a few radians the truncated series is
            poor anyway).
        n_iter: Gram steps of the bound :math:`\hat s` (>= 1, fixed, so the layer traces; the
            bound of :class:`~stabilitylab.layers.SpectralConv2d`).

    Raises:
        TypeError or ValueError: bad sizes, even kernels, an unknown padding, ``n_terms`` or
            ``n_iter`` < 1, ``max_norm`` not a number in (0, 8], naming the argument; at call
            time an input of the wrong shape (channel count, an image size the stride does not
            divide or, circular, smaller than the kernel); in evaluation mode (untraced),
            non-finite parameters.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride: int = 1,
        padding: str | int = "same",
        bias: bool = True,
        *,
        n_terms: int = 10,
        max_norm: float = 1.0,
        n_iter: int = 6,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, device, dtype)
        kh, kw = self.kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a same-size convolution and its adjoint), got {kernel_size!r}")
        if isinstance(padding, int) and not isinstance(padding, bool):
            if kh != kw or padding != kh // 2:
                raise ValueError(
                    f"padding must be 'same', 'zeros', 'circular' or kernel_size // 2 = {kh // 2}, got {padding!r}"
                )
            padding = "same"
        if padding not in _SOC_PADDINGS:
            raise ValueError(f"padding must be one of {_SOC_PADDINGS} or kernel_size // 2, got {padding!r}")
        self.padding = "circular" if padding == "circular" else "same"
        self.n_terms = check_int(n_terms, "n_terms")
        self.max_norm = check_number(max_norm, "max_norm", minimum=0.0, maximum=8.0)
        if self.max_norm <= 0:
            raise ValueError(f"max_norm must be a number in (0, 8], got {max_norm!r}")
        self.n_iter = check_int(n_iter, "n_iter")
        n = self.channels
        self.weight = nn.Parameter(torch.empty(n, n, kh, kw, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=1 / math.sqrt(n * kh * kw))
        _init_bias(self.bias, self.downsampled_channels * kh * kw)

    def normalized_kernel(self, input_size) -> tuple[Tensor, Tensor, Tensor]:
        r"""For inputs of size ``input_size`` (before downsampling): the kernel of :math:`L`
        after rescaling ``(n, n, kh, kw)``, the certified bound :math:`s \ge \|L\|_2`, and the
        truncation bound :math:`\tau` (0-dim tensors)."""
        return self._normalized(self._grid(input_size))

    def _check_grid(self, grid: tuple[int, int]) -> None:
        if self.padding == "circular" and (self.kernel_size[0] > grid[0] or self.kernel_size[1] > grid[1]):
            raise ValueError(
                f"{type(self).__name__}: the (downsampled) size {grid} of x is smaller than the kernel "
                f"{self.kernel_size}: a circular convolution would wrap the kernel around itself"
            )

    def _normalized(self, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        self._check_grid(grid)
        S = _skew_kernel(self.weight)
        kh, kw = self.kernel_size
        mode = "circular" if self.padding == "circular" else "zeros"
        # the certified bound of SpectralConv2d: cached while S is unchanged, the norm's gradient
        bound = cached_conv_bound(self, S, grid, padding_mode=mode, padding=(kh // 2, kw // 2), stride=(1, 1),
                                  n_iter=self.n_iter)
        factor = self.max_norm / bound.clamp_min(self.max_norm)  # a Python scalar: no host-to-device copy
        s = bound * factor  # = min(bound, rho) >= ||L||
        return S * factor, s, _exp_tail(s.detach(), self.n_terms, self.max_norm)

    def _series_inputs(self, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        kernel, _, tail = self._normalized(grid)
        return kernel, 1 / (1 + tail)

    def _use_spectrum(self, x: Tensor) -> bool:
        """The series on the transfer matrices (circular padding only: there the composition of
        the convolutions is the circular convolution of the composed kernels, hence a product of
        matrices per frequency; with zero padding it is not) when it is cheaper; never while
        traced (the graphs keep real convolutions) nor for dtypes without FFTs."""
        if self.padding != "circular" or x.dtype not in (torch.float32, torch.float64) or _tracing(x):
            return False
        b, _, h, w = x.shape
        return _soc_prefers_spectrum(
            b, self.channels, self.downsampled_channels, self.out_channels, (h, w), self.kernel_size, self.n_terms
        )

    def _spectral_inputs(self, grid: tuple[int, int]) -> Tensor:
        kernel, scale = self._series_inputs(grid)
        T = _exp_matrices(_transfer_matrices(kernel, grid), self.n_terms, scale)
        return T[:, : self.out_channels, : self.downsampled_channels]

    def forward(self, x: Tensor) -> Tensor:
        x, unbatched = self._prepare(x)
        grid = (x.shape[-2], x.shape[-1])
        if self._use_spectrum(x):
            T = self._cached(grid, lambda: self._spectral_inputs(grid), "spectrum")
            return self._finish(_apply_spectral(x, T, min(self.out_channels, self.channels)), unbatched)
        kernel, scale = self._cached(grid, lambda: self._series_inputs(grid), "kernel")
        y = _exp_series(self._pad_channels(x, self.channels), kernel, self.n_terms, self.padding == "circular", scale)
        return self._finish(y, unbatched)

    def export_module(self, input_size=None) -> TruncatedExpConv2d:
        """A :class:`TruncatedExpConv2d` with frozen copies of the rescaled kernel, the
        truncation factor and the bias: the same truncated series, the same outputs, for inputs of
        size ``input_size`` (default: the size of the last input the layer saw; the rescaling
        depends on it, so the exported module rejects other sizes).

        Raises:
            ValueError: no size known, or non-finite parameters."""
        self.check_parameters()
        h, w = self._export_size(input_size)
        grid = self._grid((h, w))
        with torch.no_grad():
            kernel, scale = self._series_inputs(grid)
            bias = None if self.bias is None else self.bias.detach().clone()
        return TruncatedExpConv2d(
            kernel.detach().clone(),
            scale.detach().clone(),
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            stride=self.stride,
            n_terms=self.n_terms,
            padding=self.padding,
            bias=bias,
            input_size=(h, w),
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", padding={self.padding}, n_terms={self.n_terms}, max_norm={self.max_norm}, n_iter={self.n_iter}"
        )


class TruncatedExpConv2d(nn.Module):
    r"""The fixed-weight module :meth:`SOCConv2d.export_module` returns.

    Computes :math:`y = c \sum_{j=0}^{K} L^j \tilde x / j!` sliced to the first ``out_channels``
    channels, plus the bias, where :math:`\tilde x` is the (space-to-depth downsampled,
    zero-padded to ``n`` channels) input and :math:`L` the same-size convolution with the stored
    kernel; all tensors are buffers (nothing trains). Its Lipschitz constant is at most 1 on
    inputs of the size it was exported for (the kernel was rescaled for that size), which is
    the only size it accepts (``lipschitz_constant = 1``).

    Args:
        kernel: ``(n, n, kh, kw)``, the rescaled skew kernel.
        scale: 0-dim, the factor :math:`c = 1 / (1 + \tau)`.
        in_channels, out_channels, stride, n_terms, padding, bias, input_size: as the exported
            layer (padding ``"same"`` or ``"circular"``, bias ``(out,)`` or None, input_size
            ``(h, w)``).
    """

    lipschitz_constant = 1.0

    def __init__(
        self,
        kernel: Tensor,
        scale: Tensor,
        *,
        in_channels: int,
        out_channels: int,
        stride: int,
        n_terms: int,
        padding: str,
        bias: Tensor | None,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.n_terms = n_terms
        self.padding = padding
        self.input_size = tuple(input_size)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"TruncatedExpConv2d: x must be a torch.Tensor, got {type(x).__name__}")
        unbatched = x.ndim == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"TruncatedExpConv2d was exported for inputs (N, {self.in_channels}, {self.input_size[0]}, "
                f"{self.input_size[1]}): x must have that shape, got {tuple(x.shape) if not unbatched else tuple(x.shape[1:])}"
            )
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        n = self.kernel.shape[0]
        if x.shape[1] < n:
            x = F.pad(x, (0, 0, 0, 0, 0, n - x.shape[1]))
        y = _exp_series(x, self.kernel, self.n_terms, self.padding == "circular", self.scale)
        y = y[:, : self.out_channels]
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return y.squeeze(0) if unbatched else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel.shape[-2:])}, "
            f"stride={self.stride}, padding={self.padding}, n_terms={self.n_terms}, input_size={self.input_size}"
        )
