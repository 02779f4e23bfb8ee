"""Loading a person's file and class, constructing it as people write it, and mapping its
tensors to the reference's roles."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from fromscratch.check import loader, mapping

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "check"


def test_main_block_does_not_run():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module = loader.import_file(str(FIXTURES / "seed_layernorm.py"))
    assert module.__name__ != "__main__"
    assert "__main__" in (FIXTURES / "seed_layernorm.py").read_text()
    assert out.getvalue() == ""                      # test_layer_norm() prints when it runs


def test_same_file_twice_gives_independent_modules():
    a, _ = loader.load_object(f"{FIXTURES / 'seed_layernorm.py'}:LayerNorm")
    b, _ = loader.load_object(f"{FIXTURES / 'seed_layernorm.py'}:LayerNorm")
    assert a is not b and a.__module__ != b.__module__


class Hidden(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.n, self.eps = hidden_size, eps


class Normalized(nn.Module):
    def __init__(self, normalized_shape, epsilon=1e-3, elementwise_affine=True):
        super().__init__()
        self.n, self.epsilon = normalized_shape, epsilon


class Features(nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.n, self.momentum = num_features, momentum


class Positional(nn.Module):
    def __init__(self, width, eps=1e-5):
        super().__init__()
        self.n = width


class DropProb(nn.Module):
    def __init__(self, dropout_prob=0.1):
        super().__init__()
        self.dropout_prob = dropout_prob


class KeepProb(nn.Module):
    def __init__(self, keep_prob=0.9):
        super().__init__()
        self.keep_prob = keep_prob


@pytest.mark.parametrize("cls,size_arg,eps_arg", [
    (Hidden, "hidden_size", "eps"), (Normalized, "normalized_shape", "epsilon"),
    (Features, "num_features", "eps"), (Positional, "width", "eps")])
def test_size_and_eps_go_where_the_constructor_takes_them(cls, size_arg, eps_arg):
    sig = loader.signature(cls, needs_size=True)
    assert sig.size == size_arg and sig.role_arg["eps"] == eps_arg
    inst = loader.construct(cls, sig, 37, {"eps": 1e-4})
    assert inst.n == 37 and getattr(inst, eps_arg, 1e-4) == 1e-4


def test_dropout_probability_forms():
    sig = loader.signature(DropProb, needs_size=False)
    assert sig.default("p") == 0.1
    assert loader.construct(DropProb, sig, None, {"p": 0.3}).dropout_prob == 0.3
    keep = loader.signature(KeepProb, needs_size=False)
    assert abs(keep.default("p") - 0.1) < 1e-12                     # 1 - keep_prob
    assert abs(loader.construct(KeepProb, keep, None, {"p": 0.3}).keep_prob - 0.7) < 1e-12


def test_required_argument_without_a_value_is_a_load_error():
    class Needs(nn.Module):
        def __init__(self, hidden_size, config):
            super().__init__()
    with pytest.raises(loader.LoadError, match="no value for required argument.*config"):
        loader.construct(Needs, loader.signature(Needs, True), 8, {})


class Named(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(n))
        self.betta = nn.Parameter(torch.zeros(n))
        self.running_mean = torch.zeros(n)              # plain tensor
        self.register_buffer("moving_var", torch.ones(n))


class Unnamed(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.p_shift = nn.Parameter(torch.zeros(n))     # registered first, starts at zeros
        self.p_scale = nn.Parameter(torch.ones(n))
        self.inner = nn.Module()
        self.inner.register_buffer("stat_a", torch.ones(n))
        self.inner.register_buffer("stat_b", torch.zeros(n))


ROLES = ("weight", "bias", "running_mean", "running_var")


def test_mapping_by_name():
    m = mapping.map_tensors(Named(5), 5, ROLES)
    assert {r: (s.path, s.kind) for r, s in m.slots.items()} == {
        "weight": ("gamma", "parameter"), "bias": ("betta", "parameter"),
        "running_mean": ("running_mean", "plain"), "running_var": ("moving_var", "buffer")}


def test_mapping_by_shape_and_initial_value():
    m = mapping.map_tensors(Unnamed(5), 5, ROLES)
    assert {r: s.path for r, s in m.slots.items()} == {
        "weight": "p_scale", "bias": "p_shift", "running_mean": "inner.stat_b",
        "running_var": "inner.stat_a"}


def test_mapping_of_wrapped_torch_modules():
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(6)
    m = mapping.map_tensors(Wrap(), 6, ROLES)
    assert {r: s.path for r, s in m.slots.items()} == {
        "weight": "bn.weight", "bias": "bn.bias", "running_mean": "bn.running_mean",
        "running_var": "bn.running_var"}


def test_mapping_override_and_unknown_name():
    m = mapping.map_tensors(Named(5), 5, ROLES, {"weight": "betta", "bias": "gamma"})
    assert m.get("weight").path == "betta" and m.get("bias").path == "gamma"
    with pytest.raises(KeyError, match="no tensor 'w'"):
        mapping.map_tensors(Named(5), 5, ROLES, {"weight": "w"})


class AxisWithDefault(nn.Module):              # ESPnet: LayerNorm(nout, dim=-1)
    def __init__(self, nout, dim=-1):
        super().__init__()
        self.n, self.dim = nout, dim


class SizeThenDim(nn.Module):                  # litgpt: RMSNorm(size, dim=-1, eps=1e-6)
    def __init__(self, size: int, dim: int = -1, eps: float = 1e-6):
        super().__init__()
        self.n, self.dim = size, dim


class RequiredFlag(nn.Module):                 # nanoGPT: LayerNorm(ndim, bias)
    def __init__(self, ndim, bias):
        super().__init__()
        self.n, self.bias_on = ndim, bias


@pytest.mark.parametrize("cls,size_arg", [(AxisWithDefault, "nout"), (SizeThenDim, "size"),
                                          (RequiredFlag, "ndim")])
def test_the_size_goes_to_a_required_argument_not_an_axis(cls, size_arg):
    sig = loader.signature(cls, needs_size=True)
    assert sig.size == size_arg
    inst = loader.construct(cls, sig, 37, {})
    assert inst.n == 37 and getattr(inst, "dim", -1) == -1


def test_a_required_flag_is_tried_on_then_off():
    sig = loader.signature(RequiredFlag, needs_size=True)
    assert [fixed for _, fixed in sig.choices] == [{"bias": True}, {"bias": False}]
    assert loader.construct(RequiredFlag, sig, 8, {}).bias_on is True


def test_a_rank_argument_is_tried_as_2_4_3():
    class D2l(nn.Module):                      # d2l: BatchNorm(num_features, num_dims)
        def __init__(self, num_features, num_dims):
            super().__init__()
    sig = loader.signature(D2l, needs_size=True)
    assert [fixed["num_dims"] for _, fixed in sig.choices] == [2, 4, 3]


def test_p_as_an_argument_of_forward():
    class Locked(nn.Module):                   # AWD-LSTM: forward(x, dropout=0.5)
        def forward(self, x, dropout=0.5):
            return x
    sig = loader.signature(Locked, needs_size=False, forward_roles=("p",))
    assert sig.forward_arg == {"p": "dropout"} and sig.default("p") == 0.5 and sig.takes("p")


def test_a_metaclass_that_hides_the_signature_is_looked_through():
    class Meta(type):
        def __call__(cls, *args, **kwargs):
            return super().__call__(*args, **kwargs)

    class Hidden(nn.Module, metaclass=Meta):
        def __init__(self, p):
            super().__init__()
            self.p = p
    sig = loader.signature(Hidden, needs_size=False)
    assert sig.hidden_by == "Meta" and sig.role_arg == {"p": "p"}
    assert loader.construct(Hidden, sig, None, {"p": 0.2}).p == 0.2
