"""The docs and the code point at tests and files that exist: a renamed test or file must not
leave a stale reference anywhere in README.md, docs/, src/, tests/ or benchmarks/."""
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


# a path written in prose or code: a/b.py, docs/x.md, tests/fixtures/check/real/ ...
PATH = re.compile(r"(?<![\w/.:$-])((?:[\w.-]+/)+[\w.-]*\.(?:py|md|sh|json|toml|txt|ipynb)"
                  r"|(?:tests|src|docs|benchmarks)/(?:[\w.-]+/)*[\w.-]+/?)(?![\w/])")
# references that are not files of the repository, and why
NOT_OURS = {
    "OUT/diagnose.md": "written by gpu_diagnose.py into its --out folder",
    "W/gpu_results.md": "written by gpu_session.sh into its work folder",
    "W/lscpu.txt": "written by gpu_session.sh into its work folder",
    "W/pip.txt": "written by gpu_session.sh into its work folder",
    "results/gpu_results.md": "written by gpu_kernels.py",
    "models/llama/modeling_llama.py": "Hugging Face transformers' file, cited",
    "models/gemma/modeling_gemma.py": "Hugging Face transformers' file, cited",
}
SCANNED = sorted(p for d in ("src", "tests", "docs", "benchmarks") for p in (ROOT / d).rglob("*")
                 if p.suffix in (".py", ".md", ".sh") and "fixtures" not in p.parts
                 and ".egg-info" not in str(p) and p != Path(__file__).resolve()) + \
    [ROOT / "README.md", ROOT / "Makefile"]          # (this file's examples are made up)


def resolves(ref: str, where: Path) -> bool:
    """A path as the text means it: from the repository's root, from src/ or src/fromscratch/
    (module paths), or from the citing file's folder (a relative link)."""
    ref = ref.rstrip("/")
    return any(base.joinpath(ref).exists() for base in (
        ROOT, ROOT / "src", ROOT / "src" / "fromscratch", where.parent, ROOT / "docs",
        ROOT / "tests", ROOT / "benchmarks"))


def test_every_file_reference_in_the_repository_exists():
    """Fixtures are left out: they hold other people's code verbatim, with its own paths."""
    missing = []
    for f in SCANNED:
        text = re.sub(r"https?://\S+", "", f.read_text(errors="ignore"))
        for ref in PATH.findall(text):
            if ref not in NOT_OURS and not resolves(ref, f):
                missing.append(f"{f.relative_to(ROOT)}: {ref}")
    assert not missing, "references to files the repository does not hold:\n" + "\n".join(missing)


def test_the_scan_sees_references():
    """The pattern finds the forms the repository uses (so the test above can fail)."""
    text = "see docs/check.md, `tests/check/test_real_layers.py` and kernels/_launch.py: gone/x.py"
    assert PATH.findall(text) == ["docs/check.md", "tests/check/test_real_layers.py",
                                  "kernels/_launch.py", "gone/x.py"]
    assert not resolves("gone/x.py", ROOT / "README.md")
