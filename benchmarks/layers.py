"""Benchmark: 1-Lipschitz layers against deel-torchlip and orthogonium, and certified accuracy.

Side by side in one run, on the CPU by default, for `stabilitylab.layers` and the anchor
libraries a user would otherwise pick: deel-torchlip (`SpectralConv2d`, `SpectralLinear`) and
orthogonium (`AOLConv2D`, `AdaptiveSOCConv2d`, `AdaptiveOrthoConv2d`). Four sections:

1. convolutions at 32 and 64 channels on 16x16 and 32x32 inputs, batch 64 (3x3 kernels): the
   median time in ms of a training step (forward + backward of a fixed linear functional of the
   output, with respect to the parameters and the input, then an in-place SGD update of the
   parameters, so that a layer that caches its bound recomputes it as in training), of an inference call of the module in
   evaluation mode under no_grad, and of the exported plain module (`layers.export` for ours,
   `vanilla_export` for deel-torchlip, an `nn.Conv2d` holding the computed kernel for
   orthogonium); the peak memory of the training step above what was allocated before it
   (torch.profiler CPU memory events, or `torch.cuda.max_memory_allocated` on CUDA); and the
   measured Lipschitz constant, power iteration (`stabilitylab.spectral.power_iteration`) on the
   Jacobian of the layer in evaluation mode at one input, through `torch.func.jvp` / `vjp` in
   float64 (for the affine layers that is the operator norm; it is a lower bound: a value above
   1 shows that the layer is not 1-Lipschitz). The parameters are first perturbed away from
   their (orthogonal) initialization, as they are during training, so that normalizations
   have work to do. Ratio columns: anchor time / our time for the like-for-like pairs (AOL vs
   AOL, SOC vs SOC, spectral vs spectral, BRO vs orthogonium's AdaptiveOrthoConv2d, both
   orthogonal): above 1, ours is faster.
2. the ordering of the layer families by training time, inference time and memory, against
   the ordering measured by Prach et al. 2024 ("1-Lipschitz Layers Compared",
   [prach2024comparison]) on CIFAR-10 (their published throughputs, ConvNetS).
3. dense layers of width 256 and 1024, batch 64, the same columns.
4. certified accuracy on `digits` (standardized inputs) at eps = 0.1, 0.25, 0.5 of MLPs
   64-256-256-10 (MaxMin / GroupSort2 activations) trained with the same optimizer, epochs,
   batches and loss (offset cross-entropy), ours (spectral, Björck, AOL, Cayley, BRO) against a
   deel-torchlip network of SpectralLinear layers. Radii are margin / (sqrt 2 L) with the
   declared L = 1 (`stabilitylab.certify.certified_radius`); each trained network's actual
   constant is bracketed by `stabilitylab.lipschitz.lower_bound` (Jacobian norms at test
   points, then gradient ascent) and the product of the exact (float64 SVD) norms of the
   weights it applies; a lower bound above 1 means the certificate is optimistic.

    python benchmarks/layers.py [--quick] [--device cpu|cuda] [--threads N]

Rows and machine information go to benchmarks/results/layers.json (layers_quick.json with
--quick: one configuration, the like-for-like pairs only, 2 epochs). Timings are medians after a
warm-up, taken round-robin across the layers of a configuration (one call of each per round), so
that the load of other processes on a shared machine weighs on every layer alike; a block timed
while other processes kept more than a quarter of the CPUs busy is marked with ~.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from _common import cpu_model, cpu_ticks, others_share, sync as _sync
from _common import timed as _timed
from stabilitylab import certify, layers, lipschitz
from stabilitylab.data import load_dataset
from stabilitylab.losses import offset_cross_entropy
from stabilitylab.spectral import power_iteration
from stabilitylab.timing import peak_memory

warnings.filterwarnings("ignore", category=FutureWarning)  # orthogonium's torch.jit.script

try:
    import deel.torchlip as torchlip
except ImportError:  # the anchors are optional: their rows are skipped
    torchlip = None
try:
    from orthogonium.layers.conv.AOC import AdaptiveOrthoConv2d
    from orthogonium.layers.conv.adaptiveSOC import AdaptiveSOCConv2d
    from orthogonium.layers.conv.AOL import AOLConv2D
except ImportError:
    AOLConv2D = AdaptiveSOCConv2d = AdaptiveOrthoConv2d = None

BATCH = 64
CONTENDED = 0.25  # share of the CPUs used by other processes above which a row is re-timed
EXPORT_MACS_LIMIT = 5e9  # exported Cayley / BRO convolutions have image-sized kernels
RESULTS = Path(__file__).resolve().parent / "results" / "layers.json"
EPS_GRID = (0.1, 0.25, 0.5)
EPOCHS = 20  # certified-accuracy training budget (2 with --quick)
SGD_LR = 1e-6  # the in-place update that ends every timed training step (tiny: the layers stay put)
ROUNDING = 1e-5  # float32 weights: constants within this of 1 count as 1
# Prach et al. 2024, CIFAR-10, ConvNetS: train / validation throughput (images per second) from the
# authors' data/runs/CIFAR10/final_training_24h/statistics.csv (github.com/berndprach/1LipschitzLayersCompared)
PAPER_THROUGHPUT = {
    "AOL": (2546, 9903), "CPL": (3064, 8397), "SLL": (2820, 7477), "SOC": (1443, 2304),
    "Cayley": (1278, 9202), "BCOP": (887, 10921), "LOT": (355, 4566),
}


# ----------------------------------------------------------------------------- timing and memory


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak of the memory allocated by fn() above what was allocated before it, in MiB
    (`stabilitylab.timing.peak_memory`: the allocator's peak on CUDA, the profiler's memory
    events on the CPU, where a buffer an operator frees before returning is netted out)."""
    return peak_memory(fn, device=device) / 2**20


# ----------------------------------------------------------------------------- Lipschitz constant


def measured_constant(layer: nn.Module, x0: torch.Tensor, n_iter: int, *, affine_layer: bool) -> tuple[float, str]:
    """Power iteration on the Jacobian at ``x0`` (a batch of one), in float64, of the module the
    layer deploys as (its export, which computes the same function in evaluation mode: the gap
    is recorded in each row), through ``torch.func.jvp`` / ``vjp``. With ``affine_layer`` (an
    orthogonal convolution whose export has an image-sized kernel, too slow to apply 2 n_iter
    times) the layer itself is used, in evaluation mode: J v = f(x0 + v) - f(x0) (exact for an
    affine map up to rounding) under no_grad, where it reuses its cached operator, and J^T u
    from one reusable vjp."""
    x = x0.double()
    if affine_layer:
        f = copy.deepcopy(layer).double().eval().requires_grad_(False)
        how = "layer (affine), float64"
        with torch.no_grad():
            fx = f(x)

        def forward(v):
            with torch.no_grad():
                return f(x + v) - fx
    else:
        f = export_anchor_or_ours(layer).double().eval().requires_grad_(False)
        how = "exported module, float64"

        def forward(v):
            return torch.func.jvp(f, (x,), (v,))[1]

    _, pullback = torch.func.vjp(f, x)

    def adjoint(u):
        return pullback(u)[0]

    value = power_iteration(forward, adjoint=adjoint, input_shape=tuple(x.shape), dtype=torch.float64,
                            device=x.device, n_iter=n_iter, tol=1e-9, generator=torch.Generator().manual_seed(0))
    return float(value), how


# ----------------------------------------------------------------------------- layers


def export_anchor_or_ours(layer: nn.Module) -> nn.Module:
    """The plain module a user deploys: ``layers.export`` for ours, ``vanilla_export`` for
    deel-torchlip, an ``nn.Conv2d`` holding the computed kernel for orthogonium's layers."""
    if callable(getattr(layer, "export_module", None)):
        return layers.export(layer)
    if callable(getattr(layer, "vanilla_export", None)):
        exported = layer.vanilla_export()
        exported.requires_grad_(False)
        return exported
    if isinstance(layer, nn.Conv2d):
        with torch.no_grad():
            weight = layer.weight.detach().clone()
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, tuple(weight.shape[-2:]), stride=layer.stride,
                         padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                         bias=layer.bias is not None, padding_mode=layer.padding_mode,
                         device=weight.device, dtype=weight.dtype)
        conv.weight = nn.Parameter(weight, requires_grad=False)
        if layer.bias is not None:
            conv.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        return conv
    return copy.deepcopy(layer).requires_grad_(False)


@dataclass
class Spec:
    name: str  # shown in the tables
    lib: str  # "ours", "deel-torchlip", "orthogonium", "torch"
    family: str  # "spectral", "AOL", "SOC", "orthogonal", "SLL", "CPL", "Björck", "standard"
    build: object  # (width, device) -> nn.Module
    anchor: str | None = None  # name of the anchor spec this one is compared with
    export_macs: object = None  # (width, n) -> multiply-adds of one exported call, or None


def _full_kernel_macs(c: int, n: int) -> float:
    return BATCH * c * c * n**4


def conv_specs() -> list[Spec]:
    specs = [
        Spec("nn.Conv2d (unconstrained)", "torch", "standard", lambda c, d: nn.Conv2d(c, c, 3, padding=1, device=d)),
        Spec("SpectralConv2d", "ours", "spectral", lambda c, d: layers.SpectralConv2d(c, c, 3, device=d),
             anchor="torchlip SpectralConv2d"),
        Spec("AOLConv2d", "ours", "AOL", lambda c, d: layers.AOLConv2d(c, c, 3, device=d),
             anchor="orthogonium AOLConv2D"),
        Spec("SOCConv2d n_terms=10 (default)", "ours", "SOC",
             lambda c, d: layers.SOCConv2d(c, c, 3, padding="circular", device=d),
             anchor="orthogonium AdaptiveSOCConv2d"),
        Spec("SOCConv2d n_terms=3", "ours", "SOC",
             lambda c, d: layers.SOCConv2d(c, c, 3, padding="circular", n_terms=3, device=d),
             anchor="orthogonium AdaptiveSOCConv2d"),
        Spec("CayleyConv2d", "ours", "orthogonal", lambda c, d: layers.CayleyConv2d(c, c, 3, device=d),
             export_macs=_full_kernel_macs),
        Spec("BROConv2d", "ours", "orthogonal", lambda c, d: layers.BROConv2d(c, c, 3, device=d),
             export_macs=_full_kernel_macs, anchor="orthogonium AdaptiveOrthoConv2d"),
        Spec("SLLConv2d", "ours", "SLL", lambda c, d: layers.SLLConv2d(c, device=d)),
        Spec("CPLConv2d", "ours", "CPL", lambda c, d: layers.CPLConv2d(c, device=d)),
    ]
    if torchlip is not None:
        specs.append(Spec("torchlip SpectralConv2d", "deel-torchlip", "spectral",
                          lambda c, d: torchlip.SpectralConv2d(c, c, 3, padding=1).to(d)))
    if AOLConv2D is not None:
        specs += [
            Spec("orthogonium AOLConv2D", "orthogonium", "AOL",
                 lambda c, d: AOLConv2D(c, c, 3, padding=1, device=d)),
            # its kernel grows to 7x7 (3 terms of the exponential): padding 3 keeps the size
            Spec("orthogonium AdaptiveSOCConv2d", "orthogonium", "SOC",
                 lambda c, d: AdaptiveSOCConv2d(c, c, 3, padding=3, padding_mode="circular").to(d)),
            Spec("orthogonium AdaptiveOrthoConv2d", "orthogonium", "orthogonal",
                 lambda c, d: AdaptiveOrthoConv2d(c, c, 3, padding=1, padding_mode="circular").to(d)),
        ]
    return specs


def dense_specs() -> list[Spec]:
    specs = [
        Spec("nn.Linear (unconstrained)", "torch", "standard", lambda w, d: nn.Linear(w, w, device=d)),
        Spec("SpectralLinear", "ours", "spectral", lambda w, d: layers.SpectralLinear(w, w, device=d),
             anchor="torchlip SpectralLinear"),
        Spec("BjorckLinear", "ours", "Björck", lambda w, d: layers.BjorckLinear(w, w, device=d),
             anchor="torchlip SpectralLinear"),
        Spec("AOLLinear", "ours", "AOL", lambda w, d: layers.AOLLinear(w, w, device=d)),
        Spec("CayleyLinear", "ours", "orthogonal", lambda w, d: layers.CayleyLinear(w, w, device=d)),
        Spec("BROLinear", "ours", "orthogonal", lambda w, d: layers.BROLinear(w, w, device=d)),
        Spec("SLLLinear", "ours", "SLL", lambda w, d: layers.SLLLinear(w, device=d)),
    ]
    if torchlip is not None:
        specs.append(Spec("torchlip SpectralLinear", "deel-torchlip", "spectral",
                          lambda w, d: torchlip.SpectralLinear(w, w).to(d)))
    return specs


@torch.no_grad()
def perturb(layer: nn.Module, generator: torch.Generator) -> None:
    """Move every weight (parameters with two or more dimensions) by Gaussian noise of half its
    own standard deviation, away from the orthogonal / Dirac initializations."""
    for p in layer.parameters():
        if p.ndim >= 2:
            scale = float(p.std()) or 1.0
            p.add_(0.5 * scale * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))


# ----------------------------------------------------------------------------- one configuration


def round_robin(fns: dict, repeats: int, device: torch.device) -> dict:
    """Median wall time in ms of every fn in ``fns``, called in turn (one call of each per round)
    so that a change of load on a shared machine affects every entry alike. One warm-up call
    each; an fn whose warm-up takes more than 4 s is not repeated (its warm-up is the value)."""
    samples = {name: [] for name in fns}
    slow = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        _sync(device)
        first = time.perf_counter() - start
        if first > 4.0:
            slow[name] = 1e3 * first
    for _ in range(repeats):
        for name, fn in fns.items():
            if name in slow:
                continue
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: slow.get(name) or 1e3 * statistics.median(samples[name]) for name in fns}


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median ms of fn() after a warm-up (a single measurement above 4 s)."""
    return _timed(fn, repeats, device, single_above=4.0)


def measure_config(specs: list[Spec], width: int, n: int | None, device: torch.device, repeats: int,
                   lip_iter: int) -> list[dict]:
    """All layers of one configuration: training steps, inference and exported inference timed
    round-robin across the layers, then peak memory and the measured constant of each."""
    shape = (BATCH, width) if n is None else (BATCH, width, n, n)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    probe = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(device)
    built = {}
    for spec in specs:
        torch.manual_seed(0)
        layer = spec.build(width, device)
        perturb(layer, torch.Generator().manual_seed(2))
        built[spec.name] = layer
    leaf = x.detach().clone().requires_grad_(True)

    def train_step(layer):
        params = [p for p in layer.parameters() if p.requires_grad]

        def step():
            for p in params:
                p.grad = None
            leaf.grad = None
            (layer(leaf) * probe).sum().backward()
            with torch.no_grad():  # an SGD update: no layer may reuse what it computed for the old weights
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-SGD_LR)
        return step

    def inference(module):
        def call():
            with torch.no_grad():
                module(x)
        return call

    rows = {s.name: {"layer": s.name, "lib": s.lib, "family": s.family, "anchor": s.anchor, "width": width,
                     "n": n, "note": ""} for s in specs}
    contention = {}
    for layer in built.values():
        layer.train()
    before = cpu_ticks()
    for name, ms in round_robin({k: train_step(v) for k, v in built.items()}, repeats, device).items():
        rows[name]["train_ms"] = ms
    contention["train"] = others_share(before, cpu_ticks())
    for name, layer in built.items():
        rows[name]["peak_mb"] = peak_memory_mb(train_step(layer), device)
        layer.eval()
    before = cpu_ticks()
    for name, ms in round_robin({k: inference(v) for k, v in built.items()}, repeats, device).items():
        rows[name]["eval_ms"] = ms
    contention["eval"] = others_share(before, cpu_ticks())
    exported = {}
    for spec in specs:
        layer = built[spec.name]
        module = export_anchor_or_ours(layer).eval()
        with torch.no_grad():
            rows[spec.name]["export_max_abs_diff"] = float((module(x) - layer(x)).abs().max())
        macs = spec.export_macs(width, n) if spec.export_macs is not None and n is not None else None
        if macs is not None and macs > EXPORT_MACS_LIMIT:
            rows[spec.name]["note"] = f"export not timed ({macs:.0e} MACs: image-sized kernel)"
        else:
            exported[spec.name] = module
    before = cpu_ticks()
    timings = round_robin({k: inference(v) for k, v in exported.items()}, repeats, device)
    contention["export"] = others_share(before, cpu_ticks())
    for spec in specs:
        rows[spec.name]["export_ms"] = timings.get(spec.name)
        constant, how = measured_constant(built[spec.name], x[:1], lip_iter,
                                          affine_layer=spec.export_macs is not None)
        rows[spec.name].update({"lipschitz": constant, "lipschitz_how": how, "contention": contention})
    return list(rows.values())


def add_ratios(rows: list[dict]) -> None:
    """anchor time / our time, training step and deployed inference (exported modules)."""
    by_name = {r["layer"]: r for r in rows}
    for r in rows:
        a = by_name.get(r["anchor"]) if r["anchor"] else None
        r["train_speedup"] = a["train_ms"] / r["train_ms"] if a else None
        r["export_speedup"] = (a["export_ms"] / r["export_ms"]
                               if a and a["export_ms"] and r["export_ms"] else None)
        r["eval_speedup"] = a["eval_ms"] / r["eval_ms"] if a else None


# ----------------------------------------------------------------------------- formatting


def progress(message: str) -> None:
    print(f"  ... {message}", file=sys.stderr, flush=True)


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(head: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [head] + lines) for i in range(len(head))]
    fmt = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in lines])


def layer_table(title: str, rows: list[dict]) -> str:
    head = ["layer", "lib", "train ms", "eval ms", "export ms", "peak MiB", "measured L",
            "x anchor train", "x anchor export", "note"]
    lines = []
    for r in rows:
        flag = {k: "~" if (v or 0) > CONTENDED else "" for k, v in r["contention"].items()}
        note = r["note"]
        if r["lipschitz"] > 1 + ROUNDING:
            note = "; ".join(filter(None, [note, "L > 1: not 1-Lipschitz"]))
        lines.append([r["layer"], r["lib"], _ms(r["train_ms"]) + flag["train"], _ms(r["eval_ms"]) + flag["eval"],
                      _ms(r["export_ms"]) + flag["export"], f"{r['peak_mb']:.1f}", f"{r['lipschitz']:.4f}",
                      _ratio(r["train_speedup"]), _ratio(r["export_speedup"]), note])
    return f"\n### {title}\n\n" + markdown(head, lines)


# ----------------------------------------------------------------------------- sections


def conv_section(device, repeats, quick, lip_iter) -> list[tuple[str, list[dict]]]:
    configs = [(32, 16)] if quick else [(c, n) for c in (32, 64) for n in (16, 32)]
    specs = conv_specs()
    if quick:
        keep = {"SpectralConv2d", "AOLConv2d", "SOCConv2d n_terms=3", "torchlip SpectralConv2d",
                "orthogonium AOLConv2D", "orthogonium AdaptiveSOCConv2d"}
        specs = [s for s in specs if s.name in keep]
    cases = []
    for c, n in configs:
        progress(f"convolutions, {c} channels, {n}x{n}: {len(specs)} layers")
        rows = measure_config(specs, c, n, device, repeats, lip_iter)
        add_ratios(rows)
        cases.append((f"{c} channels, {n}x{n} inputs, batch {BATCH}, 3x3 kernels", rows))
    return cases


def dense_section(device, repeats, quick, lip_iter) -> list[tuple[str, list[dict]]]:
    widths = (256,) if quick else (256, 1024)
    specs = dense_specs()
    if quick:
        specs = [s for s in specs if s.name in {"SpectralLinear", "BjorckLinear", "torchlip SpectralLinear"}]
    cases = []
    for w in widths:
        progress(f"dense layers, width {w}: {len(specs)} layers")
        rows = measure_config(specs, w, None, device, repeats, lip_iter)
        add_ratios(rows)
        cases.append((f"dense width {w}, batch {BATCH}", rows))
    return cases


def ordering(cases) -> list[dict]:
    """The orderings of Prach et al. 2024 checked on our layers, per configuration.

    From their CIFAR-10 throughputs (ConvNetS, see PAPER_THROUGHPUT): (1) training: AOL, SLL and
    CPL all faster than SOC and Cayley; (2) inference: SOC the slowest of AOL, SLL, CPL, Cayley,
    SOC (its series needs several convolutions where the others apply one precomputed operator);
    and, from their complexity analysis, (3) memory: a SOC training step keeps one activation per
    term of the series, AOL one in all, so AOL needs less."""
    out = []
    for label, rows in cases:
        ours = {r["family"]: r for r in rows if r["lib"] == "ours" and not r["layer"].endswith("n_terms=3")}
        need = ("AOL", "SLL", "CPL", "SOC", "orthogonal")
        if not all(k in ours for k in need):
            continue
        cayley = next(r for r in rows if r["layer"] == "CayleyConv2d")
        fast = [ours["AOL"], ours["SLL"], ours["CPL"]]
        slow = [ours["SOC"], cayley]
        deployed = {r["layer"]: min(v for v in (r["eval_ms"], r["export_ms"]) if v is not None)
                    for r in fast + slow}
        train_order = sorted(fast + slow, key=lambda r: r["train_ms"])
        infer_order = sorted(deployed, key=deployed.get)
        checks = [
            ("train: AOL, SLL, CPL faster than SOC, Cayley",
             max(r["train_ms"] for r in fast) < min(r["train_ms"] for r in slow)),
            ("inference: SOC slowest of AOL, SLL, CPL, Cayley, SOC", infer_order[-1] == ours["SOC"]["layer"]),
            ("memory: AOL step below SOC step", ours["AOL"]["peak_mb"] < ours["SOC"]["peak_mb"]),
        ]
        out.append({
            "case": label,
            "train_order": [f"{r['layer']} {_ms(r['train_ms'])}" for r in train_order],
            "inference_order": [f"{k} {_ms(deployed[k])}" for k in infer_order],
            "checks": [{"ordering": name, "reproduced": bool(ok)} for name, ok in checks],
        })
    return out


def targets(conv_cases) -> list[dict]:
    """Like-for-like pairs: ours no slower than the anchor (training step, exported inference),
    within 10% (two plain convolutions of the same shape differ by timing noise only)."""
    out = []
    pairs = (("SpectralConv2d", "spectral"), ("AOLConv2d", "AOL"),
             ("SOCConv2d n_terms=3", "SOC (3 terms, as the anchor)"),
             ("SOCConv2d n_terms=10 (default)", "SOC (default 10 terms)"),
             ("BROConv2d", "orthogonal (BRO vs orthogonium's AOC)"))
    for label, rows in conv_cases:
        for name, pair in pairs:
            r = next((r for r in rows if r["layer"] == name), None)
            if r is None or r["train_speedup"] is None:
                continue
            met = r["train_speedup"] >= 0.9 and (r["export_speedup"] is None or r["export_speedup"] >= 0.9)
            out.append({"case": label, "pair": pair, "met": met,
                        "numbers": f"anchor/ours train {_ratio(r['train_speedup'])}, exported inference "
                                   f"{_ratio(r['export_speedup'])}, eval-mode inference {_ratio(r['eval_speedup'])}"})
    return out


# ----------------------------------------------------------------------------- certified accuracy


def mlp(kind: str, seed: int) -> nn.Sequential:
    """64-256-256-10 with MaxMin (GroupSort2 for deel-torchlip) after each hidden layer."""
    torch.manual_seed(seed)
    make = {
        "SpectralLinear": layers.SpectralLinear, "BjorckLinear": layers.BjorckLinear, "AOLLinear": layers.AOLLinear,
        "CayleyLinear": layers.CayleyLinear, "BROLinear": layers.BROLinear,
    }
    widths = (64, 256, 256, 10)
    mods: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if kind == "torchlip SpectralLinear":
            mods.append(torchlip.SpectralLinear(a, b))
            act = torchlip.GroupSort2
        else:
            mods.append(make[kind](a, b))
            act = layers.MaxMin
        if i < len(widths) - 2:
            mods.append(act())
    return nn.Sequential(*mods)


def applied_weights(model: nn.Module, kind: str) -> list[torch.Tensor]:
    """The weight matrices the network applies in evaluation mode (from its exported copy)."""
    model.eval()
    if kind == "torchlip SpectralLinear":
        plain = nn.Sequential(*[m.vanilla_export() if hasattr(m, "vanilla_export") else m for m in model])
    else:
        plain = layers.export(model)
    return [m.weight.detach().double() for m in plain.modules() if isinstance(m, nn.Linear)]


def certified_section(device, quick: bool, progress_bar: bool = True) -> list[dict]:
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    xtr, ytr = train.tensors if hasattr(train, "tensors") else (train.x, train.y)
    xte, yte = test.tensors if hasattr(test, "tensors") else (test.x, test.y)
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    epochs, batch, lr = (2, 64, 3e-3) if quick else (EPOCHS, 64, 3e-3)
    kinds = ["SpectralLinear"]
    if not quick:
        kinds += ["BjorckLinear", "AOLLinear", "CayleyLinear", "BROLinear"]
    if torchlip is not None:
        kinds.append("torchlip SpectralLinear")
    rows = []
    for kind in kinds:
        progress(f"certified: training MLP of {kind} ({epochs} epochs)")
        model = mlp(kind, seed=0).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        order = torch.Generator().manual_seed(0)  # the same batches for every network
        start = time.perf_counter()
        model.train()
        for _ in tqdm(range(epochs), desc=kind, unit="epoch", leave=False, disable=not progress_bar):
            perm = torch.randperm(len(xtr), generator=order).to(device)
            for i in range(0, len(xtr), batch):
                idx = perm[i: i + batch]
                loss = offset_cross_entropy(model(xtr[idx]), ytr[idx], offset=math.sqrt(2) * 0.5, temperature=0.25)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        train_s = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            logits = model(xte)
        radii = certify.certified_radius(logits, yte, lipschitz=1.0)
        curve = certify.accuracy_curve(radii, (0.0,) + EPS_GRID)
        lower = float(lipschitz.lower_bound(model, xte[:32], n_steps=30, generator=torch.Generator().manual_seed(0)))
        norms = [float(torch.linalg.matrix_norm(W, ord=2)) for W in applied_weights(model, kind)]
        upper = math.prod(norms)
        rows.append({"network": kind, "lib": "deel-torchlip" if kind.startswith("torchlip") else "ours",
                     "train_s": train_s, "clean": float(curve[0]),
                     "certified": {str(e): float(v) for e, v in zip(EPS_GRID, curve[1:])},
                     "lower_bound": lower, "upper_bound": upper, "layer_norms": norms})
    return rows


def certified_table(rows, epochs_note: str) -> str:
    head = ["network (MLP 64-256-256-10)", "lib", "train s", "clean acc"] + [f"cert acc eps={e}" for e in EPS_GRID] + [
        "L lower (Jacobian+ascent)", "L upper (prod exact norms)", "certificate with L = 1"]
    lines = []
    for r in rows:
        if r["lower_bound"] > 1 + ROUNDING:
            verdict = f"optimistic: L >= {r['lower_bound']:.4f}"
        elif r["upper_bound"] > 1 + ROUNDING:
            verdict = f"not proven: upper {r['upper_bound']:.4f} > 1"
        else:
            verdict = "sound (upper <= 1 + 1e-5)"
        lines.append([r["network"], r["lib"], f"{r['train_s']:.1f}", f"{r['clean']:.3f}"]
                     + [f"{r['certified'][str(e)]:.3f}" for e in EPS_GRID]
                     + [f"{r['lower_bound']:.6f}", f"{r['upper_bound']:.6f}", verdict])
    return f"\n### Certified accuracy on digits (test, 450 images), {epochs_note}\n\n" + markdown(head, lines)


# ----------------------------------------------------------------------------- main


def machine_info(device: torch.device) -> dict:
    cpu = cpu_model()
    from importlib.metadata import PackageNotFoundError, version

    def ver(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu, "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "deel-torchlip": ver("deel-torchlip"), "orthogonium": ver("orthogonium"),
        "load_average_start": os.getloadavg(),
        "timing": "median of repeats after one warm-up; training step = forward + backward (parameters and "
                  "input); inference under no_grad in evaluation mode; a row is re-measured once while "
                  f"other processes keep > {CONTENDED:.0%} of the CPUs busy",
    }


def certified_main(args, device, machine, start) -> int:
    """--certified-only: section 4 alone, written to layers_certified.json."""
    cert = certified_section(device, args.quick, progress_bar=not args.no_progress)
    epochs = 2 if args.quick else EPOCHS
    print("\n## 4. Certified accuracy")
    print(certified_table(cert, f"{epochs} epochs, Adam lr 3e-3, batch 64, offset cross-entropy "
                                "(offset sqrt(2) * 0.5, temperature 0.25), same seed and batches"))
    total = time.perf_counter() - start
    machine["load_average_end"] = os.getloadavg()
    results = RESULTS.with_name("layers_certified_quick.json" if args.quick else "layers_certified.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"benchmark": "layers (certified accuracy)", "quick": args.quick,
                                   "machine": machine, "total_s": total, "certified": cert}, indent=1))
    print(f"\ntotal {total:.0f} s; rows written to {results}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one configuration, fewer layers, 3 epochs")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement, round-robin (default 3)")
    parser.add_argument("--skip-certified", action="store_true", help="only the layer sections")
    parser.add_argument("--certified-only", action="store_true",
                        help="only the certified-accuracy section (results in layers_certified.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    repeats = args.repeats or 3
    lip_iter = 10 if args.quick else 30
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    machine = machine_info(device)
    print(f"torch {machine['torch']}, {machine['threads']} threads, {machine['cpu']}, device {machine['device']}, "
          f"load average {machine['load_average_start'][0]:.2f}; deel-torchlip {machine['deel-torchlip']}, "
          f"orthogonium {machine['orthogonium']}")
    start = time.perf_counter()

    if args.certified_only:
        return certified_main(args, device, machine, start)
    convs = conv_section(device, repeats, args.quick, lip_iter)
    print("\n## 1. Convolutions (x anchor = anchor time / our time: above 1 ours is faster)")
    for label, rows in convs:
        print(layer_table(label, rows))
    print("\nmeasured L: power iteration on the Jacobian in evaluation mode (a lower bound of the constant);"
          "\nexport ms: the plain exported module; peak MiB: memory of one training step above what was allocated"
          f"\nbefore it; ~: measured while other processes kept > {CONTENDED:.0%} of the CPUs busy.")

    orders = ordering(convs)
    print("\n## 2. Ordering against Prach et al. 2024 (CIFAR-10 ConvNetS throughput, images/s, train / inference: "
          + ", ".join(f"{k} {t}/{i}" for k, (t, i) in PAPER_THROUGHPUT.items()) + ")")
    if not orders:
        print("(needs the AOL, SLL, CPL, SOC and Cayley rows: not in --quick)")
    for o in orders:
        print(f"\n[{o['case']}]\n  train:     " + " < ".join(o["train_order"])
              + "\n  inference: " + " < ".join(o["inference_order"]))
        for c in o["checks"]:
            print(f"  [{'reproduced' if c['reproduced'] else 'NOT reproduced'}] {c['ordering']}")

    summary = targets(convs)
    print("\nTargets: like-for-like pairs, ours no slower than the anchor (0.9 tolerance for timing noise)")
    for t in summary:
        print(f"  [{'met' if t['met'] else 'NOT MET'}] {t['case']}: {t['pair']}: {t['numbers']}")

    dense = dense_section(device, repeats, args.quick, lip_iter)
    print("\n## 3. Dense layers")
    for label, rows in dense:
        print(layer_table(label, rows))

    cert = []
    if not args.skip_certified:
        cert = certified_section(device, args.quick, progress_bar=not args.no_progress)
        epochs = 2 if args.quick else EPOCHS
        print("\n## 4. Certified accuracy")
        print(certified_table(cert, f"{epochs} epochs, Adam lr 3e-3, batch 64, offset cross-entropy "
                                    "(offset sqrt(2) * 0.5, temperature 0.25), same seed and batches"))
        print("radius = margin / (sqrt 2 * 1) (declared L = 1); eps in standardized-input units.")

    total = time.perf_counter() - start
    machine["load_average_end"] = os.getloadavg()
    all_rows = [r for _, rows in convs + dense for r in rows]
    blocks = {(r["width"], r["n"], k): v for r in all_rows for k, v in r["contention"].items()}
    contended = sum((v or 0) > CONTENDED for v in blocks.values())
    print(f"\ntotal {total:.0f} s; load average at the end {machine['load_average_end'][0]:.2f}; "
          f"{contended} of {len(blocks)} timing blocks measured under contention (~)")
    results = RESULTS.with_name("layers_quick.json") if args.quick else RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({
        "benchmark": "layers", "quick": args.quick, "machine": machine, "total_s": total,
        "paper_throughput": PAPER_THROUGHPUT, "targets": summary, "ordering": orders,
        "conv": [r for _, rows in convs for r in rows], "dense": [r for _, rows in dense for r in rows],
        "certified": cert,
    }, indent=1))
    print(f"rows written to {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
