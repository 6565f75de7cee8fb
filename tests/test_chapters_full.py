"""Every chapter's `full` configuration (data set, model, loops) runs, on torchvision-format data
sets shrunk to a few images: a Colab reader must never be the first to run it."""

import json
from pathlib import Path

import nbformat
import papermill
import pytest

from stabilitylab import book
from torchvision_format import write_cifar10, write_mnist

ROOT = Path(__file__).resolve().parents[1]

# The full configurations keep their data sets, models and loops; only sizes that would take
# a GPU are shrunk here.
SHRINK = {
    "02_lipschitz": {"depths": [1, 2], "width": 32, "toy_points": 200, "toy_epochs": 3,
                     "sdf_widths": [4, 8], "sdf_steps": 20, "sdf_points": 256,
                     "res_width": 8, "res_blocks": 2, "res_epochs": 1},
    "03_spectral_norms": {"dense": [60, 40], "channels": 8, "cnn_images": 200, "cnn_epochs": 1,
                          "zero_sizes": [4, 8], "n_kernels": 2, "repeats": 1, "max_iter": 10},
    "04_lipschitz_layers": {"features": 16, "channels": 2, "size": 4, "norm_size": 64, "norm_steps": 4,
                            "bjorck_steps": 10, "soc_terms": [1, 2], "depth": 8, "width": 16, "batch": 8,
                            "time_features": 32, "time_channels": 4, "time_size": 8, "repeats": 1},
    "05_certified_robustness": {"epochs": 1, "channels": [4, 8, 8], "taus": [0.125, 0.5], "margins": [0.2, 0.6],
                                "n_sound": 10, "sound_steps": 5},
    "06_dynamics_frequency": {"batch_sizes": [8, 16], "label_noise": [0.0, 0.4], "seeds": [0], "gains": [0.5, 2.0],
                              "epochs": 1, "hidden": [16, 16], "channels": [4, 8], "drift_samples": 8, "n_lower": 8,
                              "freq_epochs": 1, "n_points": 20, "n_draws": 1},
    "09_three_views": {"epochs": 1, "seeds": [0, 1], "channels": [4, 8], "hidden": [16], "n0": 8, "n": 50,
                       "n_certify": 4, "n_attack": 10, "pgd_steps": 2, "n_lower": 4, "lower_steps": 2,
                       "hessian_examples": 20, "n_lanczos": 5, "n_trace": 3, "m": 10, "n_variance": 2,
                       "n_grad": 2, "n_noise": 10},
    "10_topology": {"n_train": 40, "n_test": 20, "n_points": 100, "epochs": 1, "n_random": 10, "n_attack": 2,
                    "attack_iter": 1, "n_ratio": 2, "rf_trees": 10, "workers": 2},
    "08_curvature": {"epochs": 1, "n_lanczos": 20, "n_slq": 1, "top_k": 3, "n_trace": 12, "eos_steps": 30,
                     "eos_every": 10, "landscape_points": 7, "grid2d": 5, "pgd_steps": 3, "hidden": [64, 64]},
    "07_randomized_smoothing": {"epochs": 1, "width": 16, "lip_width": 16, "n0": 10, "n": 100, "n_certify": 6, "toy_points": 200,
                                "toy_epochs": 2, "grid": 20, "grid_n": 20, "lip_epochs": 1, "batch_size": 100},
}


@pytest.fixture(scope="module")
def tiny_torchvision_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("torchvision-data")
    write_mnist(root, "MNIST", n_train=40, n_test=20, seed=0)
    write_mnist(root, "FashionMNIST", n_train=40, n_test=20, seed=1)
    write_cifar10(root, n_per_batch=8, n_test=20, seed=2)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("chapter", book.chapters(ROOT), ids=lambda p: p.stem)
def test_chapter_runs_at_full_scale_on_tiny_data(chapter, tiny_torchvision_root, tmp_path, monkeypatch):
    monkeypatch.setenv("STABILITYLAB_SCALE", "full")
    monkeypatch.setenv("STABILITYLAB_DATA", str(tiny_torchvision_root))
    monkeypatch.setenv("STABILITYLAB_OVERRIDES", json.dumps(SHRINK.get(chapter.stem, {})))
    output = tmp_path / chapter.name
    papermill.execute_notebook(
        str(chapter), str(output), kernel_name="python3", cwd=str(chapter.parent), progress_bar=False
    )
    executed = nbformat.read(output, as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "scale: full" in printed
    assert not any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))
