"""Progress bars: ``progress=None`` (the default of the long loops) shows a bar unless the
environment variable ``TQDM_DISABLE`` is set; True and False are obeyed as given."""

from __future__ import annotations

import pytest
import torch

from stabilitylab import attacks, models, smoothing, train

X = torch.rand(8, 2, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1] * 4)


def _fit(**kw):
    train.fit(models.mlp(2, 2, hidden=(4,), generator=torch.Generator().manual_seed(0)), (X, Y), epochs=2,
              desc="fitting-bar", **kw)


def _certify_dataset(**kw):
    smooth = smoothing.Smooth(models.mlp(2, 2, hidden=(4,)), 2, 0.5)
    smoothing.certify_dataset(smooth, (X[:2], Y[:2]), n0=4, n=8, alpha=0.1, batch_size=8, **kw)


def _robust_accuracy(**kw):
    attacks.robust_accuracy(models.mlp(2, 2, hidden=(4,)), X, Y, 0.1, n_iter=2, **kw)


LOOPS = {"train.fit": (_fit, "fitting-bar"), "smoothing.certify_dataset": (_certify_dataset, "certify"),
         "attacks.robust_accuracy": (_robust_accuracy, "robust accuracy")}


@pytest.mark.parametrize("loop", ["train.fit", "smoothing.certify_dataset"])
@pytest.mark.parametrize("env, shown", [(None, True), ("1", False), ("true", False), ("0", True), ("", True)])
def test_the_default_honours_tqdm_disable(loop, env, shown, monkeypatch, capsys):
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    run, label = LOOPS[loop]
    run()  # progress left at its default, None
    assert (label in capsys.readouterr().err) == shown


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_explicit_values_are_obeyed(loop, monkeypatch, capsys):
    run, label = LOOPS[loop]
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    run(progress=False)
    assert label not in capsys.readouterr().err
    run(progress=True)
    assert label in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run(progress=None)
    assert label not in capsys.readouterr().err
