"""Mini-model tests, as Liger-Kernel's test/convergence: tiny Hugging Face models built from
configs (random weights, no download), each swapped with fromscratch.nn.swap and compared with
its untouched twin: logits, every gradient, and the model after a few optimizer steps.

Tolerances (float32): logits and parameters after training 1e-5 relative / 1e-5 absolute,
gradients 1e-4 / 1e-6 (a gradient sums many products; the two implementations round
differently). bfloat16: 3e-2 / 3e-2 on logits (8 significant bits, rounded after every op).
Dropout is 0 in these configs: the two dropouts draw different masks.
"""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fromscratch.nn as fnn  # noqa: E402
from fromscratch.nn import swap, unswap  # noqa: E402

from ._twins import train_alike  # noqa: E402

VOCAB, HIDDEN = 64, 32
LM = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
          num_attention_heads=4, max_position_embeddings=64)


def llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**LM, num_key_value_heads=2))


def qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**LM, num_key_value_heads=2))


def mistral():
    return transformers.MistralForCausalLM(transformers.MistralConfig(**LM, num_key_value_heads=2))


def gemma():
    return transformers.GemmaForCausalLM(transformers.GemmaConfig(**LM, num_key_value_heads=2,
                                                                   head_dim=8))


def gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def bert():
    return transformers.BertForMaskedLM(transformers.BertConfig(
        **LM, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def modernbert():
    return transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, sep_token_id=3, cls_token_id=4))


# (build, the fromscratch classes the swapped model must hold)
MODELS = {
    "llama": (llama, {fnn.RMSNorm}),
    "qwen2": (qwen2, {fnn.RMSNorm}),
    "mistral": (mistral, {fnn.RMSNorm}),
    "gemma": (gemma, {fnn.RMSNorm}),
    "gpt2": (gpt2, {fnn.LayerNorm, fnn.Dropout}),
    "bert": (bert, {fnn.LayerNorm, fnn.Dropout}),
    "modernbert": (modernbert, {fnn.LayerNorm, fnn.Dropout}),
}


def norms_and_dropouts(model) -> dict[str, int]:
    """How many norm and dropout modules, by kind, whoever's they are."""
    out: dict[str, int] = {}
    for m in model.modules():
        name = type(m).__name__
        kind = ("rmsnorm" if name.endswith("RMSNorm") else "layernorm" if name == "LayerNorm"
                else "dropout" if name == "Dropout" else None)
        if kind:
            out[kind] = out.get(kind, 0) + 1
    return out


def twins(name: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    build, _ = MODELS[name]
    ref = build().to(dtype)
    model = copy.deepcopy(ref)
    report = swap(model, backend="torch")
    return ref, model, report


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (2, 12), generator=g)
    return ids, torch.randint(5, VOCAB, (2, 12), generator=g)


def hf_step(model, batch):
    """(logits, loss) of a Hugging Face model on (inputs, labels)."""
    inputs, labels = batch
    out = model(inputs, labels=labels)
    return out.logits, out.loss


def ours(model) -> set[type]:
    return {type(m) for m in model.modules() if type(m).__module__.startswith("fromscratch")}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_swapped_model_trains_as_the_original(name):
    ref, model, report = twins(name)
    assert ours(model) == MODELS[name][1], str(report)
    assert not report.refused, str(report)
    assert len(report.replaced) == sum(norms_and_dropouts(ref).values()), str(report)
    assert list(model.state_dict()) == list(ref.state_dict())
    train_alike(ref, model, (batch(step) for step in range(3)), hf_step, lr=0.1, tol=1e-5,
                grad_tol=(1e-4, 1e-6))
    for (n, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5, msg=n)


@pytest.mark.parametrize("name", ["llama", "gemma", "gpt2"])
def test_bfloat16(name):
    ref, model, _ = twins(name, torch.bfloat16)
    ids, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=3e-2, atol=3e-2)


def test_state_dicts_load_both_ways_and_unswap_restores():
    ref, model, _ = twins("llama")
    other = llama()
    model.load_state_dict(other.state_dict())
    ref.load_state_dict(model.state_dict())
    assert unswap(model) == 5
    assert not ours(model)
    ids, _ = batch()
    torch.testing.assert_close(model(ids).logits, other(ids).logits, rtol=0, atol=0)


def test_the_report_names_functional_dropout():
    """Llama's attention dropout is a number passed to scaled_dot_product_attention: the
    report says so rather than pretend it was swapped."""
    _, _, report = twins("llama")
    assert any("attention dropout applied as a function" in n for n in report.notes), report


def test_gemma_is_taken_with_its_offset():
    _, model, report = twins("gemma")
    norms = [m for m in model.modules() if isinstance(m, fnn.RMSNorm)]
    assert norms and all(m.offset == 1.0 for m in norms), str(report)


def test_no_graph_break_under_torch_compile():
    """The swapped model traces as one graph wherever the original does."""
    import torch._dynamo as dynamo
    ref, model, _ = twins("llama")
    ids, _ = batch()
    dynamo.reset()
    breaks_ref = dynamo.explain(ref)(ids).graph_break_count
    dynamo.reset()
    breaks = dynamo.explain(model)(ids).graph_break_count
    assert breaks <= breaks_ref, (breaks, breaks_ref)
    dynamo.reset()
    # both traced, forward and backward (eager and traced attention round differently)
    compiled_ref = torch.compile(ref, backend="aot_eager")
    compiled = torch.compile(model, backend="aot_eager")
    y_ref, y = compiled_ref(ids).logits, compiled(ids).logits
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y)
    (y_ref * dy).sum().backward()
    (y * dy).sum().backward()
    for (n, p), (_, q) in zip(ref.named_parameters(), model.named_parameters()):
        scale = float(p.grad.abs().max())            # a random dy: gradients up to ~20
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6 * scale, msg=n)


def resnet():
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        layer_type="basic", num_labels=5))


def mobilenet():
    return transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(
        num_channels=3, image_size=32, depth_multiplier=0.25, num_labels=5,
        classifier_dropout_prob=0.0))


@pytest.mark.parametrize("build", [resnet, mobilenet], ids=["resnet", "mobilenet_v2"])
def test_convolutional_models_with_batch_norm_train_as_the_original(build):
    """BatchNorm2d in training (batch statistics, running statistics updated), then eval, in
    float64 to 1e-8. A deep stack of BatchNorms over a small batch (MobileNet ends on 1x1
    maps: 8 values per channel) amplifies rounding: each step's gradient differs ~100x more
    than the last step's logits (1e-13, 1e-11, 1e-10 at lr 0.01), and float32 rounding
    reaches ~1e-4 of the logits in one forward, so float32 is compared once, to 1e-3."""
    torch.manual_seed(0)
    base = build()
    ref = copy.deepcopy(base).double()
    model = copy.deepcopy(ref)
    report = swap(model, backend="torch")
    assert fnn.BatchNorm2d in ours(model) and not report.refused, str(report)
    g = torch.Generator().manual_seed(2)
    images = [(torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64),
               torch.randint(0, 5, (8,), generator=g)) for _ in range(3)]
    train_alike(ref, model, images, hf_step, lr=0.01, tol=1e-8)
    for (n, b), (_, c) in zip(ref.named_buffers(), model.named_buffers()):
        torch.testing.assert_close(c, b, rtol=1e-8, atol=1e-8, msg=n)
    ref.eval(), model.eval()
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref(x).logits, rtol=1e-8, atol=1e-8)
    ref32 = copy.deepcopy(base)
    model32 = copy.deepcopy(ref32)
    swap(model32, backend="torch")
    x = torch.randn(4, 3, 32, 32, generator=g)
    torch.testing.assert_close(model32(x).logits, ref32(x).logits, rtol=1e-3, atol=1e-3)


def test_patching_the_modelling_classes_builds_fromscratch_norms():
    """patch_transformers before building: the model holds fromscratch RMSNorms (Gemma's with
    its offset), computes what the unpatched model computes, and unpatching restores."""
    from transformers.models.gemma import modeling_gemma
    from transformers.models.llama import modeling_llama
    originals = (modeling_llama.LlamaRMSNorm, modeling_gemma.GemmaRMSNorm)
    report = fnn.patch_transformers("llama", "gemma")
    try:
        assert {r.path.rsplit(".", 1)[1] for r in report.replaced} >= {"LlamaRMSNorm",
                                                                       "GemmaRMSNorm"}
        for name, build in (("llama", llama), ("gemma", gemma)):
            torch.manual_seed(0)
            patched = build()
            norms = [m for m in patched.modules() if isinstance(m, fnn.RMSNorm)]
            assert len(norms) == 5, name
            assert all(m.offset == (1.0 if name == "gemma" else 0.0) for m in norms)
            fnn.unpatch_transformers()
            torch.manual_seed(0)
            plain = build()
            fnn.patch_transformers("llama", "gemma")
            plain.load_state_dict(patched.state_dict())
            ids, _ = batch()
            torch.testing.assert_close(patched(ids).logits, plain(ids).logits, rtol=1e-5,
                                       atol=1e-5)
    finally:
        assert fnn.unpatch_transformers() >= 2
    assert (modeling_llama.LlamaRMSNorm, modeling_gemma.GemmaRMSNorm) == originals


MORE = {
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **LM, num_key_value_heads=2, head_dim=8)),           # q_norm, k_norm over heads too
    "gemma2": lambda: transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        **LM, num_key_value_heads=2, head_dim=8)),
    "gemma3": lambda: transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **LM, num_key_value_heads=2, head_dim=8)),
    "phi3": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        **LM, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2)),
    "olmo2": lambda: transformers.Olmo2ForCausalLM(transformers.Olmo2Config(
        **LM, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2)),
    "t5": lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        dropout_rate=0.0)),
}


@pytest.mark.parametrize("name", sorted(MORE))
def test_more_model_families_match_in_float32_and_bfloat16(name):
    """Every norm replaced, none refused, the logits those of the untouched model."""
    torch.manual_seed(0)
    ref = MORE[name]()
    model = copy.deepcopy(ref)
    report = swap(model, backend="torch")
    assert not report.refused and len(report.replaced) == sum(
        norms_and_dropouts(ref).values()) + sum(type(m).__name__ == "T5LayerNorm"
                                               for m in ref.modules()), str(report)
    ids, _ = batch()
    kw = {"input_ids": ids} | ({"decoder_input_ids": ids} if name == "t5" else {})
    with torch.no_grad():
        torch.testing.assert_close(model(**kw).logits, ref(**kw).logits, rtol=1e-5, atol=1e-5)
        ref, model = ref.bfloat16(), model.bfloat16()
        torch.testing.assert_close(model(**kw).logits, ref(**kw).logits, rtol=3e-2, atol=3e-2)
