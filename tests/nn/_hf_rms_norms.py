"""Hugging Face transformers' RMSNorm forwards, written out here (transformers is not
imported): the references that ``RMSNorm(cast=..., offset=...)`` must reproduce.

``compute`` is the dtype the models call ``.float()`` / ``.to(torch.float32)``; float64
tests pass torch.float64, so that the same formula serves as a float64 reference.
"""
from __future__ import annotations

import torch


def llama_rms_norm(hidden_states: torch.Tensor, weight: torch.Tensor, eps: float,
                   compute: torch.dtype = torch.float32) -> torch.Tensor:
    """``LlamaRMSNorm.forward`` (transformers, models/llama/modeling_llama.py; Mistral's,
    Qwen2's and others are copies of it)."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(compute)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + eps)
    return weight * hidden_states.to(input_dtype)


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   compute: torch.dtype = torch.float32) -> torch.Tensor:
    """``GemmaRMSNorm.forward`` (transformers, models/gemma/modeling_gemma.py): the weight is
    stored as w - 1, initialised to zeros, and applied as 1 + w."""
    def _norm(x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    output = _norm(x.to(compute))
    output = output * (1.0 + weight.to(compute))
    return output.type_as(x)


# name: (the RMSNorm options that reproduce the model's norm, its forward taking our weight)
MODELS = {
    "llama": ({"cast": "normalized"}, llama_rms_norm),
    "gemma": ({"offset": 1.0}, gemma_rms_norm),
}


def assert_within_one_ulp(mine: torch.Tensor, ref: torch.Tensor, what: str,
                          identical: float = 0.999) -> None:
    """Same dtype; every value within one unit in the last place of ``ref`` (|d| <= eps |ref|
    bounds it), and at least the fraction ``identical`` of them bit for bit equal."""
    assert mine.dtype == ref.dtype, f"{what}: dtype {mine.dtype}, the model's {ref.dtype}"
    info = torch.finfo(ref.dtype)
    m, r = mine.detach().double(), ref.detach().double()
    bad = (m - r).abs() > info.eps * r.abs() + info.tiny
    assert not bad.any(), (f"{what}: {int(bad.sum())} values more than one ulp from the "
                           f"model's; worst |diff| {(m - r).abs().max().item():.3g}")
    same = (m == r).double().mean().item()
    assert same >= identical, f"{what}: only {same:.4%} of the values are the model's exactly"
