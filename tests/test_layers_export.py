"""export(): models of 1-Lipschitz layers become plain torch modules with identical outputs."""

import copy

import pytest
import torch
from torch import nn

from stabilitylab import layers, lipschitz
from stabilitylab.layers.orthogonal import BROConv2d, BROLinear, CayleyConv2d, CayleyLinear, SOCConv2d
from stabilitylab.testing import scramble_parameters

F64 = torch.float64

# every layer with export_module, with an input shape (without the batch dimension)
EXPORTABLE = {
    "SpectralLinear": (lambda: layers.SpectralLinear(5, 4), (5,)),
    "BjorckLinear": (lambda: layers.BjorckLinear(5, 4), (5,)),
    "SpectralConv2d": (lambda: layers.SpectralConv2d(2, 3, 3, stride=2), (2, 6, 6)),
    "SpectralConv2d-circular": (lambda: layers.SpectralConv2d(2, 3, 3, padding_mode="circular"), (2, 5, 5)),
    "AOLLinear": (lambda: layers.AOLLinear(5, 4), (5,)),
    "AOLConv2d": (lambda: layers.AOLConv2d(2, 3, 3), (2, 5, 5)),
    "AOLConv2d-circular": (lambda: layers.AOLConv2d(2, 3, 3, padding_mode="circular"), (2, 5, 5)),
    "SLLLinear": (lambda: layers.SLLLinear(5, inner_features=6), (5,)),
    "SLLConv2d": (lambda: layers.SLLConv2d(2, inner_channels=3), (2, 5, 5)),
    "SLLConv2d-circular": (lambda: layers.SLLConv2d(2, padding_mode="circular"), (2, 5, 5)),
    "CPLLinear": (lambda: layers.CPLLinear(5), (5,)),
    "CPLConv2d": (lambda: layers.CPLConv2d(2, inner_channels=3), (2, 5, 5)),
    "Householder": (lambda: layers.Householder(4), (4, 3, 3)),
    "LLNLinear": (lambda: layers.LLNLinear(5, 3), (5,)),
    "CayleyLinear": (lambda: CayleyLinear(5, 4), (5,)),
    "BROLinear": (lambda: BROLinear(4, 6), (4,)),
    "CayleyConv2d": (lambda: CayleyConv2d(2, 2, 3), (2, 4, 4)),
    "BROConv2d": (lambda: BROConv2d(2, 2, 3), (2, 4, 4)),
    "SOCConv2d": (lambda: SOCConv2d(2, 2, 3), (2, 5, 5)),
}
PLAIN = (nn.Linear, nn.Conv2d, nn.Sequential, layers.ExportedResidual, layers.Householder)


def _scrambled(name, dtype, seed=0):
    torch.manual_seed(seed)
    factory, shape = EXPORTABLE[name]
    layer = factory().to(dtype)
    return scramble_parameters(layer, noise=0.1), shape


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (F64, 1e-10)])
@pytest.mark.parametrize("name", list(EXPORTABLE))
def test_export_module_gives_identical_outputs(name, dtype, atol):
    layer, shape = _scrambled(name, dtype)
    x = torch.randn(4, *shape, dtype=dtype)
    with torch.no_grad():
        expected = layer(x)  # size-dependent layers learn the image size here
    exported = layers.export(layer)
    assert exported is not layer
    with torch.no_grad():
        assert torch.allclose(exported(x), expected, atol=atol, rtol=0)
    assert all(not p.requires_grad for p in exported.parameters())
    assert all(isinstance(m, PLAIN) or not list(m.parameters(recurse=False)) for m in exported.modules())
    assert all(p.requires_grad for p in layer.parameters())  # the original is untouched


def _mixed_model():
    torch.manual_seed(0)
    return nn.Sequential(
        layers.AOLConv2d(2, 4, 3),
        layers.MaxMin(),
        layers.SpectralConv2d(4, 4, 3),
        layers.SLLConv2d(4, inner_channels=6),
        nn.Sequential(layers.CPLConv2d(4), layers.Householder(4)),  # nested containers are walked
        SOCConv2d(4, 4, 3),
        CayleyConv2d(4, 4, 3),
        BROConv2d(4, 4, 3),
        layers.InvertibleDownsampling(2),  # 16 x 4 x 4
        layers.ScaledAvgPool2d(2),  # 16 x 2 x 2
        layers.L2NormPool2d(1),
        layers.GlobalL2NormPool2d(),  # 16
        layers.BjorckLinear(16, 8),
        layers.GroupSort(4),
        layers.SpectralLinear(8, 8),
        layers.AOLLinear(8, 8),
        layers.SLLLinear(8),
        layers.CPLLinear(8),
        CayleyLinear(8, 8),
        BROLinear(8, 8),
        layers.Householder(8),
        layers.LLNLinear(8, 3),
    )


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (F64, 1e-10)])
def test_export_of_a_model_mixing_every_layer(dtype, atol):
    model = _mixed_model().to(dtype)
    reference = copy.deepcopy(model)
    x = torch.randn(5, 2, 8, 8, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
    exported = layers.export(model)
    with torch.no_grad():
        assert torch.allclose(exported(x), expected, atol=atol, rtol=0)
    # the exported model holds no constrained layer with parameters any more
    assert not any(hasattr(m, "export_module") and not isinstance(m, layers.Householder) for m in exported.modules())
    assert all(not p.requires_grad for p in exported.parameters())
    # the input model is unchanged and still trains
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(p, q) and p.requires_grad, name
    # the original's certified bound is the last layer's declared constant (all others are 1)
    bound = lipschitz.upper_bound(model, (2, 8, 8)).item()
    assert bound == pytest.approx(model[-1].lipschitz_constant)
    assert bound <= 3**0.5 + 1e-9
    # the exported last layer is a plain nn.Linear: pairwise logit bounds apply to it
    pairwise = lipschitz.pairwise_logit_bound(exported.eval(), (2, 8, 8))
    assert pairwise.shape == (3, 3)


def test_export_reports_layers_it_cannot_export():
    model = nn.Sequential(layers.SpectralConv2d(2, 2, 3))  # never called: image size unknown
    with pytest.raises(ValueError, match="input_size"):
        layers.export(model)
    assert isinstance(layers.export(nn.Sequential(layers.SpectralConv2d(2, 2, 3, input_size=4)))[0], nn.Conv2d)
    with pytest.raises(TypeError, match="model"):
        layers.export("not a model")
