"""benchmarks/gpu_check.py, run here on the CPU at tiny sizes: every public entry point (and every
layer's training step and export) runs, returns finite results on the model's device."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402
import torch  # noqa: E402


def test_every_entry_point_runs_on_the_model_device(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    rows = gpu_check.check_entry_points(torch.device("cpu"), "tiny", repeats=0)
    failed = {row["name"]: row["detail"] for row in rows if row["status"] != "ok"}
    assert not failed
    assert len(rows) > 100


def test_results_off_the_device_or_not_finite_are_reported():
    cpu = torch.device("cpu")
    assert gpu_check._on_device((torch.ones(2), [1.0]), cpu) == []
    assert gpu_check._on_device({"a": torch.tensor([float("nan")])}, cpu) == ["non-finite tensor"]
    assert gpu_check._on_device(torch.ones(1, device="meta"), cpu) == ["tensor on meta, expected cpu"]
