"""docs/check.md describes every finding, and the seed fixtures are the notebook's code."""
from __future__ import annotations

from pathlib import Path

import pytest

from fromscratch.check.findings import CATALOG

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seed" / "seed-notebook.txt"


def test_every_finding_is_documented():
    doc = (ROOT / "docs" / "check.md").read_text()
    missing = [id for id in CATALOG if f"`{id}`" not in doc]
    assert not missing, f"docs/check.md lacks {missing}"


@pytest.mark.skipif(not SEED.exists(), reason="the seed notebook is not beside this checkout")
@pytest.mark.parametrize("name", ["seed_layernorm.py", "seed_rmsnorm.py", "seed_batchnorm.py",
                                  "seed_dropout.py"])
def test_seed_fixtures_are_verbatim(name):
    text = (ROOT / "tests" / "fixtures" / "check" / name).read_text()
    code = text.split("# ---- verbatim below ----\n", 1)[1]
    assert code.strip("\n") in SEED.read_text()
    assert 'if __name__ == "__main__":' in code
