"""Score ``fromscratch check`` on the real-code corpus (tests/fixtures/check/real/).

For each published layer the corpus gives the exit code and the findings a careful reader
expects. This prints, for the checker that is importable (this checkout's, or an older
one's with PYTHONPATH=<its src>), how many it gets exactly right, how many exit codes are
right, how many it refuses or crashes on, how many faulty layers it catches and how many
correct layers it calls wrong; ``-v`` lists every difference.

    .venv/bin/python benchmarks/check_real_code.py [-v]
    git worktree add /tmp/old <commit> && PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/check_real_code.py
"""
from __future__ import annotations

import argparse
import importlib.util
import warnings
from pathlib import Path

REAL = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "check" / "real"


def cases() -> list[tuple]:
    out = []
    for path in sorted(REAL.glob("expected_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out += module.CASES
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", action="store_true", help="list every difference")
    verbose = parser.parse_args().v
    warnings.filterwarnings("ignore")          # the layers' own deprecation warnings
    from fromscratch.check import LoadError, check_layer
    exact = code_ok = refused = faulty = caught = false_wrong = 0
    all_cases = cases()
    for file, cls, kind, code, ids, _ in all_cases:
        try:
            report = check_layer(kind, f"{REAL / file}:{cls}")
            got_code, got = report.exit_code(), report.ids()
        except LoadError:
            got_code, got = 2, {}
        except Exception as e:                 # noqa: BLE001 - an old checker may crash
            got_code, got = f"crash ({type(e).__name__})", {}
        refused += not isinstance(got_code, int) or got_code == 2
        exact += (got_code, got) == (code, ids)
        code_ok += got_code == code
        faulty += code == 1
        caught += code == 1 and got_code == 1
        false_wrong += code == 0 and got_code == 1
        if verbose and (got_code, got) != (code, ids):
            print(f"  {file}:{cls}: expected {code} {ids}, got {got_code} {got}")
    print(f"{len(all_cases)} layers: {exact} exactly right (exit code and findings), "
          f"{code_ok} exit codes right, {refused} refused or crashed, {caught} of {faulty} "
          f"faulty layers caught, {false_wrong} correct layers called wrong")


if __name__ == "__main__":
    main()
