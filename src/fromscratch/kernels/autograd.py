"""The torch.autograd.Functions whose forward and backward are the Triton kernels, gathered
from the op files that define them (each beside its kernels and launchers), and their
custom ops for torch.compile (``library``).

Inputs arrive as 2-D (rows, hidden) tensors: the entries in ``fromscratch.autograd``
validate and flatten them. The kernels' backward is not itself differentiable: asking for a
second derivative (``create_graph=True``) raises; use ``backend="torch"`` for double
backward.
Under torch.compile the front-ends call the same kernels through ``library``'s custom ops.
"""
from __future__ import annotations

from .batch_norm import BatchNormFn
from .dropout import DropoutFn
from .layer_norm import LayerNormFn
from .residual_rms_norm import FusedAddRMSNormFn
from .rms_norm import RMSNormFn

try:       # the same kernels as custom ops, for torch.compile (the front-ends use them there)
    from . import library
except Exception as e:                          # noqa: BLE001 - a torch without that API
    import warnings
    warnings.warn(f"fromscratch.kernels.library did not load ({type(e).__name__}: {e}); under "
                  "torch.compile the kernels run outside the graph (a graph break)",
                  stacklevel=2)
    library = None

__all__ = ["BatchNormFn", "DropoutFn", "FusedAddRMSNormFn", "LayerNormFn", "RMSNormFn",
           "library"]
