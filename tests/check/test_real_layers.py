"""The checker on real code: hand-written layers copied verbatim from public repositories.

tests/fixtures/check/real/ holds each layer as published (the source, commit, line range
and licence in its header; only imports and, where the excerpt takes them from its
package, minimal stand-ins are added above the marker). The expected_*.py files give, for
each, the exit code and the findings a careful reader expects, from reading the code and
comparing it with torch (expected_more.py is a later batch whose expectations were written
before the checker was run on it). Every one is checked here, so a change to the checker
that misjudges real code fails the suite.
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from fromscratch.check import check_layer

from .test_fixtures import show

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "check" / "real"
MARK = "# ---- verbatim below ----\n"


def manifest(name: str):
    spec = importlib.util.spec_from_file_location(name, REAL / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MANIFESTS = [manifest(p.stem) for p in sorted(REAL.glob("expected_*.py"))]
CASES = [case for m in MANIFESTS for case in m.CASES]
VERBATIM = {k: v for m in MANIFESTS for k, v in m.VERBATIM.items()}
SOURCES = {k: v for m in MANIFESTS for k, v in m.SOURCES.items()}


@pytest.mark.filterwarnings("ignore:invalid escape sequence")   # labml's docstrings, verbatim
@pytest.mark.parametrize("file,cls,kind,code,expected,reading", CASES,
                         ids=[f"{f[:-3]}:{c}" for f, c, *_ in CASES])
def test_real_layer_gets_what_a_careful_reader_expects(file, cls, kind, code, expected, reading):
    report = check_layer(kind, f"{REAL / file}:{cls}")
    assert (report.exit_code(), report.ids()) == (code, expected), \
        f"\nexpected: {reading}\n" + show(report)


def test_a_construction_chosen_among_several_is_named_in_the_notes():
    """d2l's BatchNorm(num_features, num_dims) can be built three ways; the report says which."""
    report = check_layer("batchnorm", f"{REAL / 'd2l_batchnorm.py'}:BatchNorm")
    assert any(n.startswith("built as BatchNorm(") for n in report.notes), report.notes


def test_the_corpus_is_large_and_varied():
    """At least 20 layers from at least 12 repositories, every kind, correct and faulty."""
    files = {f for f, *_ in CASES}
    assert len(CASES) >= 20 and len(files) == len(CASES)
    assert len(set(SOURCES.values())) >= 12
    assert {kind for _, _, kind, *_ in CASES} == {"layernorm", "rmsnorm", "batchnorm", "dropout"}
    assert {code for _, _, _, code, *_ in CASES} == {0, 1}
    assert files == set(VERBATIM) == set(SOURCES)
    assert files == {p.name for p in REAL.glob("*.py") if not p.name.startswith("expected")}


@pytest.mark.parametrize("file", sorted(VERBATIM))
def test_real_layers_are_unchanged_below_their_marker(file):
    """Each file is the published code verbatim below its marker, with where it came from
    and its licence above it."""
    text = (REAL / file).read_text()
    head, code = text.split(MARK, 1)
    assert hashlib.sha256(code.strip("\n").encode()).hexdigest() == VERBATIM[file], (
        f"{file} was edited below its marker: it must stay the published code verbatim")
    assert "https://github.com/" in head and "# Licence: " in head
    assert any(x in head for x in ("MIT", "Apache-2.0", "BSD", "MIT-0"))
