"""Every fixture in tests/fixtures/check is classified with exactly the right findings.

Each row is (file, class, kind, {finding id: severity}): the right diagnoses and no false
one. The seed notebook's four classes are copied verbatim; correct implementations
(fromscratch's own, torch.nn wrapped in the notebook's constructor form, hand-written with
gamma/beta names) must come out with no finding at all.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fromscratch.check import LoadError, check_layer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "check"
W, F, V = "wrong", "fragile", "variant"
KINDS = {"layernorm": "LayerNorm", "rmsnorm": "RMSNorm", "batchnorm": "BatchNorm",
         "dropout": "Dropout"}

SEED = [
    # its LayerNorm is right for its eps of 1e-6; float16 overflows (x.var in float16)
    ("seed_layernorm.py", "layernorm", {"fp16-overflow": F}),
    ("seed_rmsnorm.py", "rmsnorm", {"floor-division": W, "fp16-overflow": F}),
    ("seed_batchnorm.py", "batchnorm", {
        "floor-division": W, "unbiased-variance": W, "eval-ignored": W,
        "running-not-buffer": W, "running-graph": W, "running-shape": W,
        "wrong-dims": W,            # dim=(0, 1) mixes the channels of (N, C) input
        "fp16-overflow": F}),
    ("seed_dropout.py", "dropout", {
        "randn-mask": W, "eval-ignored": W, "p-not-validated": F, "p-one-nan": F,
        "dtype-changed": F, "device-mismatch": F}),
]

CORRECT = [(f, kind, {}) for f in ("fromscratch_layers.py", "torch_wrapped.py",
                                   "handwritten_correct.py") for kind in KINDS]

BUGGY = [
    ("ln_eps_outside.py", "layernorm", {"eps-outside-sqrt": V, "fp16-overflow": F}),
    ("ln_wrong_dim.py", "layernorm", {"wrong-dims": W, "fp16-overflow": F}),
    ("ln_unbiased.py", "layernorm", {"unbiased-variance": W, "fp16-overflow": F,
                                     "tuple-shape": F}),
    ("ln_annotated_transformer.py", "layernorm", {"unbiased-variance": W,
                                                  "eps-outside-sqrt": V}),
    ("ln_no_keepdim.py", "layernorm", {"missing-keepdim": W}),
    ("ln_detached_stats.py", "layernorm", {"stats-detached": W, "fp16-overflow": F}),
    ("ln_custom_backward.py", "layernorm", {"wrong-backward": W, "fp16-overflow": F}),
    ("ln_plain_gamma.py", "layernorm", {"param-not-registered": W, "fp16-overflow": F}),
    ("ln_one_pass.py", "layernorm", {"one-pass-variance": F}),
    ("ln_inplace.py", "layernorm", {"input-modified": W}),
    ("ln_swapped_affine.py", "layernorm", {"affine-wrong": W}),
    ("rms_sum_not_mean.py", "rmsnorm", {"sum-not-mean": W, "fp16-overflow": F}),
    ("rms_subtracts_mean.py", "rmsnorm", {"subtracts-mean": W}),
    ("rms_llama_no_upcast.py", "rmsnorm", {"fp16-overflow": F}),
    ("rms_custom_backward.py", "rmsnorm", {"wrong-backward": W}),
    ("bn_keras_momentum.py", "batchnorm", {"momentum-keras": W, "fp16-overflow": F}),
    ("bn_batch_stats_in_eval.py", "batchnorm", {"eval-batch-stats": W, "fp16-overflow": F}),
    ("bn_biased_running_var.py", "batchnorm", {"running-var-biased": W, "fp16-overflow": F}),
    ("bn_no_detach.py", "batchnorm", {"running-graph": W, "fp16-overflow": F}),
    ("bn_dim0.py", "batchnorm", {"wrong-dims": W, "running-shape": W, "fp16-overflow": F}),
    ("bn_eval_updates.py", "batchnorm", {"eval-updates-running": W, "fp16-overflow": F}),
    # upcasts float16 only: in bfloat16 its one-pass variance goes negative, sqrt gives NaN
    ("bn_one_pass.py", "batchnorm", {"one-pass-variance": F, "bf16-precision": F}),
    ("dropout_keep_prob.py", "dropout", {"keep-drop-confused": W}),
    ("dropout_no_rescale.py", "dropout", {"no-rescale": W}),
    ("dropout_fixed_mask.py", "dropout", {"mask-not-fresh": W}),
    ("dropout_classic.py", "dropout", {"non-inverted": W}),
    ("dropout_shared_mask.py", "dropout", {"mask-shared": W}),
    # dims wrong on 3-D input, right on 2-D, where the biased running_var still shows
    ("bn_dim0_biased_running.py", "batchnorm", {"wrong-dims": W, "running-shape": W,
                                                "running-var-biased": W, "fp16-overflow": F}),
    ("ln_grad_mode.py", "layernorm", {"mode-follows-grad": W, "fp16-overflow": F}),
]


def show(report) -> str:
    lines = [f"{report.kind} {report.target}"]
    for f in report.findings:
        lines.append(f"  {f.severity} {f.id}: {f.title}")
        lines += [f"      - {e}" for e in f.evidence]
    lines += [f"  check {c.status} {c.name} {c.note}" for c in report.checks
              if c.status != "pass"]
    return "\n".join(lines)


@pytest.mark.parametrize("file,kind,expected", SEED + CORRECT + BUGGY,
                         ids=[f"{f}-{k}" for f, k, _ in SEED + CORRECT + BUGGY])
def test_fixture_is_classified(file, kind, expected):
    report = check_layer(kind, f"{FIXTURES / file}:{KINDS[kind]}")
    assert report.ids() == expected, "\n" + show(report)


def test_at_least_twelve_buggy_variants():
    assert len(BUGGY) >= 12
    assert all(expected for _, _, expected in BUGGY)
    assert len({f for f, _, _ in BUGGY}) == len(BUGGY)


def test_the_issue_examples_are_worded_as_promised():
    def titles(file, kind):
        return {f.id: f.title for f in check_layer(kind, f"{FIXTURES / file}:{KINDS[kind]}")
                .findings}
    rms = titles("seed_rmsnorm.py", "rmsnorm")
    assert rms["floor-division"] == "output is floor-divided: `//` where `/` was meant"
    bn = titles("seed_batchnorm.py", "batchnorm")
    assert bn["eval-ignored"] == ("eval() changes nothing: `self.train` is a method and always "
                                  "true; test `self.training`")
    assert bn["unbiased-variance"] == ("normalises with the unbiased variance; BatchNorm "
                                       "normalises with the biased one and stores the "
                                       "unbiased one")
    assert bn["running-not-buffer"] == ("running_mean and running_var are not buffers: missing "
                                        "from state_dict and left behind by .to()")
    dropout = titles("seed_dropout.py", "dropout")
    assert dropout["randn-mask"] == ("keeps 46% of units at p=0.1, expected 90%: the mask is "
                                     "drawn from randn, not rand")


def test_the_reference_uses_the_layers_own_eps():
    """The notebook's LayerNorm uses eps=1e-6, not torch's 1e-5: not a finding, and the
    report says where the value came from."""
    report = check_layer("layernorm", f"{FIXTURES / 'seed_layernorm.py'}:LayerNorm")
    assert report.settings["eps"] == 1e-6
    assert report.settings["eps from"] == "the constructor's default"
    assert "gamma -> weight" in report.mapping and "beta -> bias" in report.mapping


def test_evidence_is_measured_not_canned():
    report = check_layer("batchnorm", f"{FIXTURES / 'bn_keras_momentum.py'}:BatchNorm")
    f = report.get("momentum-keras")
    assert "momentum=0.1" in f.title
    assert "after 3 training steps" in f.evidence[0] and "running_mean[0] =" in f.evidence[0]


def test_eps_given_is_passed_to_the_constructor():
    report = check_layer("layernorm", f"{FIXTURES / 'seed_layernorm.py'}:LayerNorm", eps=1e-3)
    assert report.settings["eps"] == 1e-3
    assert report.settings["eps from"] == "given on the command line"
    assert report.ids() == {"fp16-overflow": F}      # the layer used it: no eps finding


@pytest.mark.parametrize("eps,severity", [(1e-5, F), (1e-2, W)])
def test_hard_coded_eps_is_measured(tmp_path, eps, severity):
    """A layer that ignores self.eps (1e-6) is caught and the eps it uses is measured:
    fragile when it shows only near constant rows, wrong when on ordinary rows too."""
    f = tmp_path / "hard.py"
    f.write_text((FIXTURES / "handwritten_correct.py").read_text().replace(
        "torch.sqrt(var + self.eps)", f"torch.sqrt(var + {eps})"))
    report = check_layer("layernorm", f"{f}:LayerNorm")
    assert report.ids() == {"eps-ignored": severity}, show(report)
    assert report.get("eps-ignored").title == (f"normalises with eps = {eps:.3g}, not the "
                                               f"layer's eps = 1e-06")


HALF_CAST = """
import torch
from torch import nn


class LayerNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x):
        half = x.dtype in (torch.float16, torch.bfloat16)
        xf = x.float() if half else x
        mean = xf.mean(-1, keepdim=True)
        var = xf.var(-1, keepdim=True, unbiased=False)
        y = (xf - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias
        return y.half() if half else y
"""


def test_a_cast_back_written_for_float16_only_is_caught_in_bfloat16(tmp_path):
    """``.half()`` where ``.to(x.dtype)`` was meant: right in float16, float16 out for
    bfloat16 input."""
    f = tmp_path / "half.py"
    f.write_text(HALF_CAST)
    report = check_layer("layernorm", f"{f}:LayerNorm")
    assert report.ids() == {"dtype-changed": F}, show(report)
    assert report.get("dtype-changed").title == "returns float16 for bfloat16 input"


CHANNELS_FIRST = [("BatchNorm2d", {}), ("TorchBatchNorm1d", {}),
                  ("UnbiasedBatchNorm2d", {"unbiased-variance": W, "fp16-overflow": F})]


@pytest.mark.parametrize("cls,expected", CHANNELS_FIRST, ids=[c for c, _ in CHANNELS_FIRST])
def test_channels_first_batchnorm_is_classified(cls, expected):
    """torch.nn's layout, (N, C, ...): the battery's inputs reach it with the channels moved
    to dim 1, so a correct one has no finding and a wrong one the right one."""
    report = check_layer("batchnorm", f"{FIXTURES / 'bn_channels_first.py'}:{cls}")
    assert report.ids() == expected, "\n" + show(report)
    assert any(n.startswith("channels-first") for n in report.notes), report.notes


def test_channels_last_batchnorm_is_not_taken_for_channels_first():
    report = check_layer("batchnorm", f"{FIXTURES / 'handwritten_correct.py'}:BatchNorm")
    assert not any("channels-first" in n for n in report.notes), report.notes


@pytest.mark.parametrize("cls,kind", [("LayerNorm", "layernorm"), ("RMSNorm", "rmsnorm"),
                                      ("IntOnlyLayerNorm", "layernorm")])
def test_tuple_normalized_shape(cls, kind):
    """A layer whose constructor promises torch's normalized_shape is run with (3, 5) on
    (4, 3, 5) input: right ones pass that check; one whose forward cannot take a tuple gets
    a note and a skipped check, not a finding; a hidden_size layer is not asked."""
    report = check_layer(kind, f"{FIXTURES / 'norm_tuple_shape.py'}:{cls}")
    assert report.ids() == {}, "\n" + show(report)
    check = next(c for c in report.checks if c.name.startswith("normalized_shape (3, 5)"))
    if cls == "IntOnlyLayerNorm":
        assert check.status == "skip"
        assert any("normalized_shape=(3, 5) not checked" in n for n in report.notes)
    else:
        assert check.status == "pass", "\n" + show(report)
    plain = check_layer("layernorm", f"{FIXTURES / 'handwritten_correct.py'}:LayerNorm")
    assert not any(c.name.startswith("normalized_shape") for c in plain.checks)


def test_tuple_shape_finding_names_the_last_dimension():
    """ln_unbiased takes torch's normalized_shape and reduces over dim=-1: with (3, 5) its
    output is its own (unbiased) formula over the last dim alone."""
    report = check_layer("layernorm", f"{FIXTURES / 'ln_unbiased.py'}:LayerNorm")
    f = report.get("tuple-shape")
    assert f.title == "normalized_shape=(3, 5) is accepted, but only the last dimension is " \
        "normalised", f.title
    assert "(4, 3, 5)" in f.evidence[0]


SEQUENCES = [
    ("dropout_global_p.py", "Dropout", {"reads-global": W, "p-not-validated": F}),
    ("dropout_global_p.py", "FixedDropout", {}),
    ("dropout_sequences.py", "SharedOverBatchAndTime", {"mask-shared": W, "p-not-validated": F,
                                                        "p-one-nan": F}),
    ("dropout_sequences.py", "LockedNoRescale", {"no-rescale": W, "locked-dropout": V}),
]


@pytest.mark.parametrize("file,cls,expected", SEQUENCES, ids=[c for _, c, _ in SEQUENCES])
def test_dropout_as_people_write_it(file, cls, expected):
    """p with no default behind a metaclass, p read from a global, masks shared along a
    dimension of (batch, time, features) input: by mistake, or by design (named)."""
    report = check_layer("dropout", f"{FIXTURES / file}:{cls}")
    assert report.ids() == expected, "\n" + show(report)


def test_a_global_p_is_measured_not_guessed():
    report = check_layer("dropout", f"{FIXTURES / 'dropout_global_p.py'}:Dropout")
    f = report.get("reads-global")
    assert f.title == "forward reads the module's global `p`, not the layer's own p"
    assert "the file defines no global p" in f.evidence[0]
    assert "constructed with p = 0.1 and the module's global p = 0.5, it keeps" in f.evidence[1]
    assert "the metaclass PrePostInit hides the constructor's signature; read from __init__" \
        in report.notes


def test_p_given_reaches_a_constructor_hidden_by_a_metaclass():
    report = check_layer("dropout", f"{FIXTURES / 'dropout_global_p.py'}:FixedDropout", p=0.3)
    assert report.settings["p"] == 0.3 and report.settings["p from"] == "given on the command line"
    assert any(c.name == "keep rate at p=0.3" and c.status == "pass" for c in report.checks)


def test_a_layer_that_does_not_take_tensors_cannot_be_checked():
    """A plain class that fails on every tensor (micrograd's lists of scalars) is not called
    wrong: exit 2, saying why."""
    with pytest.raises(LoadError, match="is not a torch.nn.Module and fails on every tensor "
                                        "input tried"):
        check_layer("layernorm", f"{FIXTURES / 'not_tensors.py'}:LayerNorm")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the layer runs on this machine's GPU")
def test_a_layer_that_runs_only_on_a_gpu_cannot_be_checked_on_a_cpu():
    """Not called wrong for what the machine lacks: exit 2, saying why."""
    with pytest.raises(LoadError, match="it runs only on a GPU"):
        check_layer("rmsnorm", f"{FIXTURES / 'gpu_only.py'}:RMSNorm")
