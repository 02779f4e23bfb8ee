"""`fromscratch check`: exit codes 0 / 1 / 2, --json, --strict, and messages that say why a
class cannot be checked."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fromscratch.check.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "check"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_correct_layer_exits_0_and_shows_the_checks(capsys):
    code, out, _ = run(capsys, "layernorm", f"{FIXTURES / 'handwritten_correct.py'}:LayerNorm")
    assert code == 0
    assert "no wrong finding (exit 0)" in out
    assert "gamma -> weight" in out and "eps placement" in out


def test_wrong_finding_exits_1_with_the_diagnosis(capsys):
    code, out, _ = run(capsys, "rmsnorm", f"{FIXTURES / 'seed_rmsnorm.py'}:RMSNorm")
    assert code == 1
    assert "floor-divided" in out and "[floor-division]" in out


def test_fragile_only_exits_0_unless_strict(capsys):
    target = f"{FIXTURES / 'seed_layernorm.py'}:LayerNorm"
    assert run(capsys, "layernorm", target)[0] == 0
    assert run(capsys, "layernorm", target, "--strict")[0] == 1


def test_a_named_convention_exits_0_unless_strict_and_says_how_to_load_weights(capsys):
    """Gemma's 1 + weight is a variant, not a mistake: exit 0, named, with the conversion."""
    target = f"{FIXTURES / 'real' / 'hf_gemma_rmsnorm.py'}:GemmaRMSNorm"
    code, out, _ = run(capsys, "rmsnorm", target, "--json")
    report = json.loads(out)
    assert code == 0 and report["exit_code"] == 0
    (f,) = report["findings"]
    assert f["id"] == "weight-offset" and f["severity"] == "variant"
    assert f["fix"] == ("to load torch.nn weights w into it: weight = w - 1; from it into "
                        "torch.nn: w = 1 + weight")
    code, out, _ = run(capsys, "rmsnorm", target)
    assert code == 0 and "1 variant (exit 0)" in out
    assert run(capsys, "rmsnorm", target, "--strict")[0] == 1


def test_json_report(capsys):
    code, out, _ = run(capsys, "dropout", f"{FIXTURES / 'seed_dropout.py'}:Dropout", "--json")
    report = json.loads(out)
    assert code == 1 == report["exit_code"]
    assert report["settings"]["p"] == 0.1
    ids = {f["id"]: f["severity"] for f in report["findings"]}
    assert ids["randn-mask"] == "wrong" and ids["p-not-validated"] == "fragile"
    f = next(f for f in report["findings"] if f["id"] == "randn-mask")
    assert set(f) == {"id", "severity", "title", "evidence", "cause", "fix"}
    assert any(c["name"] == "identity in eval" and c["status"] == "fail"
               for c in report["checks"])


def test_json_gradient_report(capsys):
    code, out, _ = run(capsys, "gradient", f"{ROOT / 'tests/fixtures/seed_notebook_nn.py'}"
                       ":NeuralNetwork", "--json", "--layers", "1,25,1")
    report = json.loads(out)
    assert code == 1
    assert report["findings"][0]["title"] == "the gradient is that of half the reported loss"
    assert {row["parameter"] for row in report["table"]} == {"w1", "b1", "w2", "b2"}


@pytest.mark.parametrize("target,message", [
    ("nowhere.py:LayerNorm", "no such file"),
    (f"{FIXTURES / 'seed_layernorm.py'}:Nope", "has no 'Nope'; it defines: LayerNorm"),
    (f"{FIXTURES / 'seed_layernorm.py'}", "expected FILE.py:ClassName"),
    (f"{FIXTURES / 'seed_layernorm.py'}:test_layer_norm", "is a function but neither a torch.nn.Module"),
])
def test_unloadable_exits_2_with_the_reason(capsys, target, message):
    code, out, err = run(capsys, "layernorm", target)
    assert code == 2
    assert message in err, err


def test_constructor_failure_exits_2_naming_the_call(capsys, tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("import torch\nclass LayerNorm(torch.nn.Module):\n"
                 "    def __init__(self, hidden_size, eps=1e-5):\n"
                 "        super().__init__()\n        raise RuntimeError('boom')\n")
    code, out, err = run(capsys, "layernorm", f"{f}:LayerNorm", "--json")
    assert code == 2
    assert "LayerNorm(hidden_size=37) failed: RuntimeError: boom" in err
    assert json.loads(out)["exit_code"] == 2


def test_import_failure_exits_2(capsys, tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("import torch\ndef broken(:\n")
    code, _, err = run(capsys, "layernorm", f"{f}:LayerNorm")
    assert code == 2 and "SyntaxError" in err


def test_param_override_maps_by_hand(capsys, tmp_path):
    """Names the mapping cannot guess (and both tensors start at ones) are given by hand."""
    f = tmp_path / "odd.py"
    f.write_text(
        "import torch\nfrom torch import nn\nclass LayerNorm(nn.Module):\n"
        "    def __init__(self, hidden_size, eps=1e-5):\n        super().__init__()\n"
        "        self.eps = eps\n        self.p1 = nn.Parameter(torch.ones(hidden_size))\n"
        "        self.p2 = nn.Parameter(torch.ones(hidden_size))\n"
        "    def forward(self, x):\n        xf = x.double()\n"
        "        m = xf.mean(-1, keepdim=True); v = xf.var(-1, keepdim=True, unbiased=False)\n"
        "        return ((xf - m) / torch.sqrt(v + self.eps) * self.p2 + self.p1).to(x.dtype)\n")
    target = f"{f}:LayerNorm"
    assert run(capsys, "layernorm", target)[0] == 1                  # p1 taken as the weight
    assert run(capsys, "layernorm", target, "--param", "weight=p2", "--param", "bias=p1")[0] == 0


def test_fresh_process_on_the_notebooks_classes():
    """`python -m fromscratch check` in a new process, as from a fresh clone."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-m", "fromscratch", "check", "batchnorm",
                          "tests/fixtures/check/seed_batchnorm.py:BatchNorm", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    ids = {f["id"] for f in json.loads(out.stdout)["findings"]}
    assert {"floor-division", "unbiased-variance", "eval-ignored", "running-not-buffer"} <= ids
