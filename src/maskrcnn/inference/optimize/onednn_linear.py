"""``nn.Linear`` whose CPU float32 inference runs on oneDNN's matmul (``inference=fast``).

PyTorch sends ``nn.Linear`` on CPU to the BLAS sgemm it was built with (MKL); this runs it through
``torch.ops.mkldnn._linear_pointwise`` instead, the oneDNN library that already runs every
convolution, which is faster for the box head's large layers on some CPUs (docs/benchmarks.md).
The sums are the same terms in another order, so outputs move by float32 rounding (~1e-6 relative).

The swap keeps the parameters and their state-dict keys; anything the oneDNN op does not cover
(autograd, autocast, another device or dtype, tracing, scripting, compiling) runs
``nn.Linear.forward`` unchanged.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from maskrcnn.inference.optimize.module_swap import swap_exact_type

log = logging.getLogger(__name__)
# set when the oneDNN op raised once (a build or CPU without the kernel): plain nn.Linear from then on
_UNAVAILABLE: list[str] = []


def _onednn_usable(x: Tensor, weight: Tensor) -> bool:
    return (
        not _UNAVAILABLE
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
    )


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool = False) -> Tensor | None:
    """``F.linear(x, weight, bias)`` (then ReLU when ``relu``) on oneDNN's matmul, for
    x: Tensor[R, in] and weight: Tensor[out, in]; None where the op does not apply (see
    ``_onednn_usable``) or is unavailable (logged once), so the caller runs its own path."""
    if not _onednn_usable(x, weight):
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "relu" if relu else "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        _UNAVAILABLE.append(str(exc))
        log.warning("oneDNN linear unavailable here (%s); using nn.Linear", str(exc).splitlines()[0][:200])
        return None


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` with a oneDNN forward for CPU float32 inference (module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor[..., in_features] -> Tensor[..., out_features]."""
        out = onednn_linear(x.reshape(-1, self.in_features), self.weight, self.bias)
        if out is None:
            return super().forward(x)
        return out.view(*x.shape[:-1], self.out_features)


def use_onednn_linear(module: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` in ``module`` into a ``OneDNNLinear`` (in place, same
    parameters). Returns how many were switched; subclasses of ``nn.Linear`` are left alone."""
    return swap_exact_type(module, nn.Linear, OneDNNLinear)
