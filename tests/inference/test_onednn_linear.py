"""modeling/onednn_linear.py: the oneDNN forward of the inference copy's linear layers gives
nn.Linear's outputs up to float32 reordering, runs the oneDNN op only where it applies, and
keeps the parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from maskrcnn.inference.optimize.onednn_linear import OneDNNLinear, use_onednn_linear


def _ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("shape", [(37, 300), (2, 5, 300)])
@pytest.mark.parametrize("bias", [True, False])
def test_same_outputs_as_linear_through_onednn(shape, bias):
    torch.manual_seed(0)
    plain = nn.Linear(300, 70, bias=bias)
    fast = copy.deepcopy(plain)
    assert use_onednn_linear(fast) == 1 and type(fast) is OneDNNLinear
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = plain(x)
        got = fast(x)
        ops = _ops(lambda: fast(x))
    assert got.shape == expected.shape == (*shape[:-1], 70)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert "mkldnn::_linear_pointwise" in ops


def test_falls_back_to_linear_with_autograd_or_other_dtypes():
    fast = nn.Linear(8, 4)
    use_onednn_linear(fast)
    x = torch.randn(3, 8)
    out = fast(x)  # grad enabled: nn.Linear's forward, differentiable
    assert out.grad_fn is not None and "mkldnn::_linear_pointwise" not in _ops(lambda: fast(x))
    with torch.no_grad():
        double = copy.deepcopy(fast).double()
        torch.testing.assert_close(double(x.double()), nn.functional.linear(x.double(), double.weight, double.bias))


def test_switches_plain_linear_only_and_keeps_state_dict():
    class Custom(nn.Linear):
        pass

    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Custom(4, 2))
    keys = net.state_dict().keys()
    assert use_onednn_linear(net) == 1
    assert type(net[0]) is OneDNNLinear and type(net[2]) is Custom
    assert net.state_dict().keys() == keys


def test_falls_back_for_good_when_the_onednn_op_fails(monkeypatch, caplog):
    from maskrcnn.inference.optimize import onednn_linear

    class Broken:
        def _linear_pointwise(self, *args):
            raise RuntimeError("no oneDNN kernel for this CPU")

    monkeypatch.setattr(onednn_linear, "_UNAVAILABLE", [])
    monkeypatch.setattr(torch.ops, "mkldnn", Broken())
    layer = nn.Linear(6, 3)
    plain = copy.deepcopy(layer)
    use_onednn_linear(layer)
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.equal(layer(x), plain(x))
        assert torch.equal(layer(x), plain(x))  # second call: no retry, no second warning
    assert onednn_linear._UNAVAILABLE and caplog.text.count("oneDNN linear unavailable") == 1
