"""Every public entry point and every chapter's full configuration, on a GPU, timed.

For whoever has a GPU (nobody on the project's CPU machines does):

    python benchmarks/gpu_check.py                       # CUDA: entry points, then every chapter at `full`
    python benchmarks/gpu_check.py --skip-chapters       # entry points only (a minute)
    python benchmarks/gpu_check.py --chapters 05 08      # chosen chapters
    python benchmarks/gpu_check.py --device cpu --size tiny --skip-chapters   # what the tests run

Part 1 calls every public function of the package (the calls listed in ``entry_points.py``) with
the model, the data and the certified quantities on ``--device``, and checks that the results are
finite and live on that device (or are Python numbers); each call is timed (median of repeats
after a warm-up, synchronized). Part 2 writes MNIST, Fashion-MNIST and CIFAR-10 at their real sizes
in torchvision's on-disk format (random images: no network on the GPU machine), then executes each
chapter with papermill at ``full`` scale on that data into a temporary folder (the stored chapters
are never touched: only the runner writes them) and times it.

Writes ``benchmarks/results/gpu_check.json`` and prints one table per part; the exit status is the
number of failures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from _common import sync  # noqa: E402


def _on_device(value, device: torch.device) -> list[str]:
    """Problems with a result: tensors off ``device`` or not finite (recursing into containers)."""
    problems = []
    if isinstance(value, torch.Tensor):
        if value.device.type != device.type:
            problems.append(f"tensor on {value.device}, expected {device}")
        if (value.device.type != "meta" and value.is_floating_point() and value.numel()
                and not bool(torch.isfinite(value).all())):
            problems.append("non-finite tensor")
    elif isinstance(value, float):
        if value != value:
            problems.append("NaN result")
    elif isinstance(value, (tuple, list)):
        for item in value:
            problems += _on_device(item, device)
    elif isinstance(value, dict):
        for item in value.values():
            problems += _on_device(item, device)
    elif hasattr(value, "_asdict"):
        problems += _on_device(tuple(value), device)
    return problems


def check_entry_points(device: torch.device, size: str, repeats: int) -> list[dict]:
    """Run every call of ``entry_points.calls(device, size)``; one row per call."""
    import entry_points

    rows = []
    for call in entry_points.calls(device, size):
        row = {"name": call.name, "status": "ok", "ms": None, "detail": ""}
        try:
            samples = []
            for i in range(1 + repeats):
                start = time.perf_counter()
                result = call.run()
                sync(device)
                if i:
                    samples.append(time.perf_counter() - start)
            problems = [] if call.device_free else _on_device(result, device)
            if problems:
                row.update(status="wrong", detail="; ".join(sorted(set(problems))))
            row["ms"] = 1e3 * statistics.median(samples) if samples else None
        except Exception as error:  # report every failure, keep going
            row.update(status="error", detail=f"{type(error).__name__}: {error}"[:300])
            row["traceback"] = traceback.format_exc(limit=6)
        rows.append(row)
        ms = "" if row["ms"] is None else f"{row['ms']:9.2f} ms"
        print(f"  {row['status']:5s} {row['name']:45s} {ms} {row['detail'][:80]}", flush=True)
    return rows


def write_full_size_data(root: Path) -> None:
    """MNIST, Fashion-MNIST (60000 + 10000) and CIFAR-10 (50000 + 10000) of random images."""
    from torchvision_format import write_cifar10, write_mnist

    write_mnist(root, "MNIST", n_train=60_000, n_test=10_000, seed=0)
    write_mnist(root, "FashionMNIST", n_train=60_000, n_test=10_000, seed=1)
    write_cifar10(root, n_per_batch=10_000, n_test=10_000, seed=2)


def check_chapters(selected: list[str], data_root: Path, timeout: int) -> list[dict]:
    """Execute each chapter at ``full`` scale on ``data_root`` into a temporary folder."""
    import nbformat
    import papermill

    from stabilitylab import book

    rows = []
    chapters = book.chapters(ROOT)
    if selected:
        chapters = [c for c in chapters if any(c.stem.startswith(s) for s in selected)]
    env = {"STABILITYLAB_SCALE": "full", "STABILITYLAB_DATA": str(data_root)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        with tempfile.TemporaryDirectory() as out:
            for chapter in chapters:
                row = {"name": chapter.stem, "status": "ok", "s": None, "detail": ""}
                start = time.perf_counter()
                try:
                    papermill.execute_notebook(str(chapter), str(Path(out) / chapter.name), kernel_name="python3",
                                               cwd=str(chapter.parent), progress_bar=False,
                                               execution_timeout=timeout)
                    cells = nbformat.read(Path(out) / chapter.name, as_version=4).cells
                    printed = "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))
                    if "scale: full" not in printed:
                        row.update(status="wrong", detail="the chapter did not run at full scale")
                except Exception as error:
                    row.update(status="error", detail=f"{type(error).__name__}: {error}"[-300:])
                row["s"] = time.perf_counter() - start
                rows.append(row)
                print(f"  {row['status']:5s} {row['name']:30s} {row['s']:8.1f} s {row['detail'][:80]}", flush=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="full", choices=("tiny", "full"), help="entry-point workload sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-chapters", action="store_true")
    parser.add_argument("--chapters", nargs="*", default=[], help="chapter name prefixes (default: all)")
    parser.add_argument("--data", default=None, help="reuse a folder of full-size torchvision-format data")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per chapter cell")
    parser.add_argument("--out", default=str(HERE / "results" / "gpu_check.json"))
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    os.environ.setdefault("TQDM_DISABLE", "1")  # one line per call, not progress bars
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu to check the script itself", file=sys.stderr)
        return 2
    machine = {"device": str(device), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    print(f"entry points on {device} ({machine['gpu'] or 'cpu'}), size {args.size}")
    results = {"machine": machine, "entry_points": check_entry_points(device, args.size, args.repeats)}
    if not args.skip_chapters:
        with tempfile.TemporaryDirectory() as tmp:
            data_root = Path(args.data) if args.data else Path(tmp)
            if not args.data:
                start = time.perf_counter()
                write_full_size_data(data_root)
                print(f"full-size data written in {time.perf_counter() - start:.0f} s")
            print("chapters at full scale")
            results["chapters"] = check_chapters(args.chapters, data_root, args.timeout)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    failures = [r for part in ("entry_points", "chapters") for r in results.get(part, []) if r["status"] != "ok"]
    print(f"{len(failures)} failure(s); results in {out}")
    return min(len(failures), 100)


if __name__ == "__main__":
    sys.exit(main())
