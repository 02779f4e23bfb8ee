"""docs/check.md describes every finding, and the seed fixtures are the notebook's code."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fromscratch.check.findings import CATALOG

ROOT = Path(__file__).resolve().parents[2]
# SHA-256 of the part below "# ---- verbatim below ----" of each fixture, taken when it was
# checked to be a verbatim part of the study notebook (docs/seed_notebook.md)
VERBATIM = {
    "tests/fixtures/check/seed_layernorm.py":
        "89d27584b4b8ec8cd7dfb7bec0e95ffda0d4cf42eb29f7b3e4d6eeadb6e94f00",
    "tests/fixtures/check/seed_rmsnorm.py":
        "1ff8fa58bda1191d9973286e1be3f64daa9007259bd783ef17e0480eac46af0b",
    "tests/fixtures/check/seed_batchnorm.py":
        "c3aa56480dbc41c0f78d7458321fc66e09dd45a3a9ca93d3d28bb4f5aad067db",
    "tests/fixtures/check/seed_dropout.py":
        "f9dc807ddf406316c15dfad1f9844381ab89c06b448f524994622a89892cbd89",
    "tests/fixtures/seed_notebook_nn.py":
        "d0f615f0888a164719f723c837222fe755656dbc3e29ff7234cd172ad5719ebc",
}


def test_every_finding_is_documented():
    doc = (ROOT / "docs" / "check.md").read_text()
    missing = [id for id in CATALOG if f"`{id}`" not in doc]
    assert not missing, f"docs/check.md lacks {missing}"


@pytest.mark.parametrize("name", sorted(VERBATIM))
def test_seed_fixtures_are_unchanged(name):
    code = (ROOT / name).read_text().split("# ---- verbatim below ----\n", 1)[1].strip("\n")
    assert hashlib.sha256(code.encode()).hexdigest() == VERBATIM[name], (
        f"{name} was edited below its marker: it must stay the notebook's code verbatim")
    if "check" in name:                          # the layer cells keep their __main__ block
        assert 'if __name__ == "__main__":' in code
    assert name in (ROOT / "docs" / "seed_notebook.md").read_text()
