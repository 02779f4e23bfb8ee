"""The CPU benchmark scripts run end to end at a tiny size and write their sections."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench_modules():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import cpu_layers
        import cpu_passes
        yield cpu_layers, cpu_passes
    finally:
        sys.path.pop(0)


def test_cpu_layers_writes_every_contender(bench_modules, tmp_path, capsys):
    cpu_layers, _ = bench_modules
    results = tmp_path / "RESULTS.md"
    assert cpu_layers.main(["--rows", "64", "--cols", "32", "--repeats", "3", "--warmup", "1",
                            "--only", "LayerNorm", "Dropout", "--write",
                            "--results", str(results)]) == 0
    text = results.read_text()
    assert "<!-- cpu_layers:begin -->" in text and "<!-- cpu_layers:end -->" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| LayerNorm") or line.startswith("| Dropout")}
    assert set(rows) == {"LayerNorm", "Dropout(p=0.1)"}
    cells = [c.strip() for c in rows["LayerNorm"].split("|")[2:-1]]
    assert all(cells[i].replace(".", "").isdigit() for i in (0, 1, 2, 3)), cells  # four times
    assert "(compile:" in rows["LayerNorm"] and "(compile:" not in rows["Dropout(p=0.1)"]


def test_cpu_passes_counts_the_passes(bench_modules, capsys):
    _, cpu_passes = bench_modules
    assert cpu_passes.main(["--layer", "LayerNorm", "--rows", "256", "--cols", "512",
                            "--steps", "2", "--allocator", "default"]) == 0
    out = capsys.readouterr().out
    ours = next(line for line in out.splitlines() if line.startswith("| ours |"))
    passes = float(ours.split("|")[-2])
    assert passes >= 5, ours            # at least the forward's five array passes
    assert "1 fused kernel per direction" in out
