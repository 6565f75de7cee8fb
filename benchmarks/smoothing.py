"""Benchmark: what randomized-smoothing certification costs beyond the forward passes it needs.

For an MLP and a small CNN on `digits`-shaped inputs (8 x 8, 10 classes), and a CNN on
CIFAR-shaped inputs (3 x 32 x 32), three timings of the same n0 + n noisy forward passes:

* `forward`: the bare base model on noisy inputs drawn beforehand (forward passes only);
* `noise + forward`: the shortest loop a user would write, `base(x + sigma * randn(...))` per batch
  under `torch.inference_mode()`, counting nothing;
* `Smooth.certify`: selection, estimation, counting, the Clopper-Pearson bound and the radius;
* `Smooth.certify_lvm`: softmax averages, empirical Bernstein bounds.

The overhead of certify is its time over `noise + forward` minus one (target: at most 5%); the
table also gives noisy samples per second. Rounds alternate the loops so that a drift in the
machine's speed hits all of them alike; each time is the median over rounds.

    python benchmarks/smoothing.py [--quick] [--device cpu|cuda] [--threads T]

Results go to benchmarks/results/smoothing.json (smoothing_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from stabilitylab import models
from stabilitylab.smoothing import Smooth

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def case(name, base, shape, *, n0, n, batch_size, sigma, rounds, device) -> dict:
    base = base.to(device).eval()
    x = torch.randn(shape, device=device)
    total = n0 + n
    smooth = Smooth(base, 10, sigma)
    gen = torch.Generator(device=device).manual_seed(0)
    sizes = [min(batch_size, n0 - i) for i in range(0, n0, batch_size)]
    sizes += [min(batch_size, n - i) for i in range(0, n, batch_size)]
    drawn = [x + sigma * torch.randn((b, *shape), device=device, generator=gen) for b in sizes]

    def forward_only():
        with torch.inference_mode():
            for batch in drawn:
                base(batch)

    def noise_and_forward():
        with torch.inference_mode():
            for b in sizes:
                base(x + sigma * torch.randn((b, *shape), device=device, generator=gen))

    def certify():
        smooth.certify(x, n0, n, 0.001, batch_size, generator=gen)

    def certify_lvm():
        smooth.certify_lvm(x, n0, n, 0.001, batch_size, maps=[("softmax", 1.0)], generator=gen)

    loops = {"forward": forward_only, "noise + forward": noise_and_forward,
             "Smooth.certify": certify, "Smooth.certify_lvm": certify_lvm}
    for fn in loops.values():  # warm-up
        fn()
    times = {k: [] for k in loops}
    for _ in range(rounds):
        for key, fn in loops.items():
            times[key].append(_seconds(fn, device))
    medians = {k: statistics.median(v) for k, v in times.items()}
    reference = medians["noise + forward"]
    rows = []
    for key, seconds in medians.items():
        rows.append({
            "model": name, "loop": key, "samples": total, "batch_size": batch_size,
            "ms": 1e3 * seconds, "samples_per_s": total / seconds,
            "ratio_to_noise_forward": seconds / reference,
            "parameters": sum(p.numel() for p in base.parameters()),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples and rounds: a smoke test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    n0, n, rounds = (20, 500, 2) if args.quick else (100, 10_000, 7)
    cases = [
        ("MLP 64-256-256-10", models.mlp(64, 10, hidden=(256, 256)), (64,), 1000),
        ("CNN digits 1x8x8 (16-32 ch)", models.cnn(1, 10, input_size=8, channels=(16, 32), hidden=64), (1, 8, 8), 1000),
        ("CNN CIFAR 3x32x32 (32-64 ch)", models.cnn(3, 10, input_size=32, channels=(32, 64), hidden=128), (3, 32, 32), 500),
    ]
    rows = []
    for name, base, shape, batch_size in cases:
        if args.quick and "CIFAR" in name:
            n_case = 200
        else:
            n_case = n if "CIFAR" not in name else n // 5
        rows += case(name, base, shape, n0=n0, n=n_case, batch_size=batch_size, sigma=0.25,
                     rounds=rounds, device=device)

    print(f"\nRandomized smoothing: n0 = {n0}, n = {n} (CIFAR-shaped: n / 5), sigma = 0.25, alpha = 0.001, "
          f"{args.device}, {torch.get_num_threads()} threads\n")
    print("| model | loop | samples | ms | samples / s | time / (noise + forward) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['loop']} | {r['samples']} | {r['ms']:.1f} | {r['samples_per_s']:,.0f} | "
              f"{r['ratio_to_noise_forward']:.3f} |")
    overheads = {r["model"]: r["ratio_to_noise_forward"] - 1 for r in rows if r["loop"] == "Smooth.certify"}
    print("\nOverhead of Smooth.certify over noise + forward (target <= 5%): "
          + ", ".join(f"{k}: {100 * v:+.1f}%" for k, v in overheads.items()))

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("smoothing_quick.json" if args.quick else "smoothing.json")
    out.write_text(json.dumps({
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device},
        "settings": {"n0": n0, "n": n, "sigma": 0.25, "alpha": 0.001, "rounds": rounds},
        "rows": rows,
        "certify_overhead": overheads,
    }, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
