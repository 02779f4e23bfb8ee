"""The docs point at tests and files that exist: a renamed test must not leave a stale reference."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_referenced_tests_and_files_exist(doc: Path) -> None:
    text = doc.read_text()
    missing = []
    for path, name in re.findall(r"`((?:tests|src|benchmarks|docs)/[\w/.-]+\.(?:py|md))(?:::(\w+))?", text):
        target = ROOT / path
        if not target.exists():
            missing.append(path)
        elif name and not re.search(rf"def {name}\b", target.read_text()):
            missing.append(f"{path}::{name}")
    assert not missing, f"{doc.name} refers to what does not exist: {missing}"


def test_readme_python_snippets_run() -> None:
    """Every ```python block of the README runs as written, in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README shows no Python"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
