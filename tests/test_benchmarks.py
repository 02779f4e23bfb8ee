"""The CPU benchmark scripts run end to end at a tiny size and write their sections; the
warm-up they share leaves out only the optional compile contender."""
from __future__ import annotations

import pytest

from tests._benchmarks import benchmark_script


def test_cpu_layers_writes_every_contender(tmp_path):
    cpu_layers = benchmark_script("cpu_layers")
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


def test_cpu_passes_counts_the_passes(capsys):
    cpu_passes = benchmark_script("cpu_passes")
    assert cpu_passes.main(["--layer", "LayerNorm", "--rows", "256", "--cols", "512",
                            "--steps", "2", "--allocator", "default"]) == 0
    out = capsys.readouterr().out
    ours = next(line for line in out.splitlines() if line.startswith("| ours |"))
    passes = float(ours.split("|")[-2])
    assert passes >= 5, ours            # at least the forward's five array passes
    assert "1 fused kernel per direction" in out


def test_warm_up_leaves_out_only_the_optional_contender(capsys):
    results = benchmark_script("_results")

    def broken():
        raise RuntimeError("no C++ compiler")
    calls = []
    kept = results.warm_up({"ours": lambda: calls.append(1), "compiled": broken}, 2,
                           optional="compiled")
    assert list(kept) == ["ours"] and calls == [1, 1]
    assert "compiled left out: no C++ compiler" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        results.warm_up({"ours": broken}, 1, optional="compiled")


def test_host_overhead_times_every_op_and_restores_the_kernels(tmp_path):
    host = benchmark_script("host_overhead")
    from fromscratch.kernels import layer_norm
    kernel = layer_norm._fwd_kernel
    results = tmp_path / "RESULTS.md"
    assert host.main(["--steps", "30", "--rounds", "3", "--write",
                      "--results", str(results)]) == 0
    assert layer_norm._fwd_kernel is kernel            # the no-op launches are undone
    text = results.read_text().split("Where the step's host time goes")
    rows = [line for line in text[0].splitlines() if line.startswith("| ")]
    phases = [line for line in text[1].splitlines() if line.startswith("| ")]
    assert [r.split("|")[1:3] for r in phases[1:]] == (
        [[f" {op} ", " ours "] for op in host.OPS] + [[" - ", " floor "]])
    for line in phases[1:]:                 # each phase timed (the floor's forward: no launch)
        *parts, total, in_launches = [c.strip() for c in line.split("|")[4:-1]]
        assert float(total) > 0 and all(p == "-" or float(p) >= 0 for p in parts), line
        assert ("floor" in line) == (parts[1] == "-"), line
        # no-op launchers: a small share of the step, none for the floor (nothing launched)
        assert (float(in_launches) == 0) == ("floor" in line), line
        assert float(in_launches) < float(total) / 2, line
    table = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows[1:]}
    floor = table.pop("floor (autograd, nothing else)")
    custom_op = table.pop("layer_norm through its custom op, called eagerly")
    assert custom_op[3:] == ["-", "-"] and launched_within_the_step(*custom_op[1:3]), custom_op
    assert set(table) == set(host.OPS)
    for op, cells in table.items():        # fwd, fwd+bwd, to the backward's launch; torch's two
        fwd, both, to_bwd, *torch_cells = map(float, cells)
        assert len(torch_cells) == 2 and min(fwd, to_bwd, *torch_cells) > 0, (op, cells)
        assert launched_within_the_step(both, to_bwd), f"{op}: backward after the step? {cells}"
    assert floor[3:] == ["-", "-"] and launched_within_the_step(*floor[1:3]), floor


def launched_within_the_step(both: str | float, to_bwd: str | float) -> bool:
    """Within one step the backward launches before the step ends, but the two columns are
    medians of separate runs, which a busy machine (CI's other worker) can swap by a few
    percent: only a gross error (the wrong launch taken as the backward's) fails."""
    return 0 < float(to_bwd) < 2 * float(both)


def test_gpu_benchmark_names_a_contender_that_writes_into_a_shared_input():
    """Liger's RMSNorm by default writes dx into dy: every later step and check then read a
    corrupted gradient. The GPU benchmark fingerprints the inputs and names who changed one."""
    import torch
    gpu_kernels = benchmark_script("gpu_kernels")
    bench = gpu_kernels.Bench(gpu_kernels.parse(["--smoke"]))
    d = {"x": torch.randn(4, 8), "dy": torch.randn(4, 8), "rm": torch.zeros(8)}
    before = bench.fingerprint(d)
    d["rm"] += 1                                       # running statistics: updated by design
    bench.check_untouched("rms_norm", (4, 8), "well-behaved", d, before)
    assert bench.checks == []
    d["dy"][0, 0] = float("nan")                       # what an in-place backward leaves
    bench.check_untouched("rms_norm", (4, 8), "in-place", d, before)
    bench.check_untouched("rms_norm", (4, 8), "next", d, before)     # reported once
    assert [(c["ok"], c["what"]) for c in bench.checks] == [
        (False, "in-place wrote into the shared input dy")]
