"""``fromscratch demo verify``: the table runs, passes, and its JSON says what it measured."""
from __future__ import annotations

import json

import pytest
import torch

from fromscratch.demos import verify


def test_main_passes_and_writes_the_json(tmp_path, capsys):
    assert verify.main(["--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["passed"] is True
    rows = {(r["layer"], r["dtype"]): r for r in report["rows"]}
    layers = ("LayerNorm", "RMSNorm", "BatchNorm", "Dropout")
    assert set(rows) == {(layer, dtype) for layer in layers
                         for dtype in ("float64", "float32", "float16", "bfloat16")}
    for (layer, dtype), r in rows.items():
        assert r["passed"], f"{layer} {dtype} failed: {r}"
        grads = {c["name"] for c in r["backward"]}
        expected = {"LayerNorm": {"dx", "dweight", "dbias"}, "RMSNorm": {"dx", "dweight"},
                    "BatchNorm": {"dx", "dweight", "dbias"}, "Dropout": {"dx"}}[layer]
        assert grads == expected, f"{layer} {dtype}: compared {grads}"
        for c in r["forward"] + r["backward"]:
            assert c["within"] and 0 <= c["ours"] < 1, f"{layer} {dtype} {c}"
    # float64 is exact to round-off; the low-precision rows are not, so the errors are real
    assert rows[("LayerNorm", "float64")]["forward"][0]["ours"] < 1e-12
    assert rows[("LayerNorm", "bfloat16")]["forward"][0]["ours"] > 1e-4
    assert {c["name"] for c in rows[("BatchNorm", "float32")]["forward"]} == {
        "y", "running_mean", "running_var"}
    out = capsys.readouterr().out
    assert "16 of 16 pass" in out and "LayerNorm" in out


def test_a_wrong_backward_fails_the_row(monkeypatch):
    """A row can fail: a LayerNorm whose dx drops the mean(g) term of eq. 8 is caught in
    every dtype, and the other layers are unaffected."""
    from fromscratch.ops import layer_norm as ln

    right = ln.backward

    def wrong(dy, cache):
        dx, dw, db = right(dy, cache)
        g = dy * cache.weight
        return dx + cache.rstd * g.mean(-1, keepdim=True), dw, db

    monkeypatch.setattr(ln, "backward", wrong)
    for dtype in verify.DTYPES.values():
        row = verify.check_layer("LayerNorm", dtype)
        assert not row.passed, f"{dtype}: a wrong dx passed: {row}"
        assert [c.name for c in row.backward if not c.within] == ["dx"]
    assert verify.check_layer("RMSNorm", torch.float32).passed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inputs_are_mean_shifted_with_a_random_upstream_gradient(dtype):
    t = verify.inputs(dtype)
    assert t["x"].dtype == dtype and t["x"].shape[-1] & (t["x"].shape[-1] - 1) != 0
    row_means = t["x"].double().mean(-1)
    assert row_means.abs().max() > 2, "rows are not mean-shifted"
    assert not torch.all(t["dy"] == 1) and t["dy"].double().std() > 0.5
