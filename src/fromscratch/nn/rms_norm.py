from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import _checks as check
from ..autograd.rms_norm import RMS_CASTS, fused_add_rms_norm, rms_norm
from ..kernels.dispatch import check_backend


class _RMSNormBase(nn.Module):
    """What RMSNorm and FusedAddRMSNorm share: the constructor, the weight and its repr."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, *, backend: str = "auto",
                 offset: float = 0.0, cast: str = "output"):
        super().__init__()
        name = type(self).__name__
        self.backend = check_backend(backend)     # plain attributes: not in state_dict
        self.offset = check.finite(name, "offset", offset)
        self.cast = check.choice(name, "cast", cast, RMS_CASTS)
        self.normalized_shape = check.normalized_shape(name, normalized_shape)
        self.eps = None if eps is None else check.epsilon(name, eps)
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, device=device,
                                                   dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1 - offset: the weight as applied, offset + weight, starts at 1 (ones by
        default, zeros for Gemma's offset=1, as GemmaRMSNorm initialises it)."""
        if self.weight is not None:
            nn.init.constant_(self.weight, 1.0 - self.offset)

    def extra_repr(self) -> str:
        return ("{normalized_shape}, eps={eps}, "
                "elementwise_affine={elementwise_affine}".format(**self.__dict__)
                + ("" if self.offset == 0.0 else f", offset={self.offset}")
                + ("" if self.cast == "output" else f", cast={self.cast!r}")
                + ("" if self.backend == "auto" else f", backend={self.backend!r}"))


class RMSNorm(_RMSNormBase):
    """Drop-in ``torch.nn.RMSNorm`` with the hand-derived backward of ``ops.rms_norm``.

    y = x / sqrt(mean(x^2) + eps) * (offset + weight); ``eps=None`` means float32's machine
    epsilon (float64's for float64 input), as torch.

    Two keyword-only options reproduce the RMSNorms of Hugging Face's models (state dicts
    load unchanged: the one key is ``weight``):

    * ``offset``: the weight is applied as offset + weight. Gemma stores weight - 1 and
      applies 1 + weight: ``offset=1.0``. ``reset_parameters`` sets weight = 1 - offset
      (zeros for offset=1), so that the weight as applied starts at 1.
    * ``cast``: what is cast to the input's dtype when fp16/bf16 input is computed in
      float32. ``"output"`` (default): the weight is applied in float32 and the output cast
      once, as GemmaRMSNorm. ``"normalized"``: the normalised x is cast, then the weight
      applied in the dtype torch promotes weight and input to (the output's dtype), as
      LlamaRMSNorm, ``weight * hidden_states.to(input_dtype)``. float32 and float64 input
      give the same numbers in both modes (float64 is computed in float64, where the models'
      ``.float()`` would drop to float32).

    ``LlamaRMSNorm(n, eps)`` (and Mistral's, Qwen2's, ...) is ``RMSNorm(n, eps,
    cast="normalized")``; ``GemmaRMSNorm(n, eps)`` is ``RMSNorm(n, eps, offset=1.0)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.normalized_shape, self.weight, self.eps, self.backend,
                        offset=self.offset, cast=self.cast)


class FusedAddRMSNorm(_RMSNormBase):
    """The residual add and RMSNorm of a pre-norm block in one call:
    ``forward(x, residual) -> (s, y)`` with s = x + residual (in x's dtype) and
    y = RMSNorm(s). The constructor and state dict are ``RMSNorm``'s, ``offset`` and
    ``cast`` included; on CUDA the Triton kernels read x and residual once and write s and
    y (``functional.fused_add_rms_norm``), elsewhere the two steps run composed.

    In a pre-norm transformer the residual stream carries s from block to block; each
    sublayer's output is added to it and normalised for the next sublayer::

        hidden = embed(tokens)
        residual = torch.zeros_like(hidden)           # the first add then gives hidden
        for block in blocks:
            residual, h = block.attn_norm(hidden, residual)   # residual += hidden; norm
            hidden = block.attn(h)
            residual, h = block.mlp_norm(hidden, residual)
            hidden = block.mlp(h)
        residual, h = final_norm(hidden, residual)

    A swap helper cannot put this module in place of a model's RMSNorm by itself: the model
    calls its norm with one tensor and adds the residual in its own code, so the fusion
    needs a model whose code calls a norm with a residual argument (as vLLM's layers do).
    """

    def forward(self, x: torch.Tensor, residual: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return fused_add_rms_norm(x, residual, self.normalized_shape, self.weight, self.eps,
                                  self.backend, offset=self.offset, cast=self.cast)
