"""The demos. Each module has ``main(argv) -> int`` and takes at least ``--out DIR``.

``fromscratch demo NAME`` runs one; ``fromscratch demo`` runs them all in this order.
"""
from __future__ import annotations

import importlib

DEMOS: dict[str, str] = {
    "verify": "fromscratch.demos.verify",  # every layer against torch, per dtype
    "sine": "fromscratch.demos.sine",      # the notebook's NumPy network on a sine
    "moons": "fromscratch.demos.moons",    # NumPy classifier, cross-entropy
    "cubic": "fromscratch.demos.cubic",    # the notebook's torch MLP, trained through fit
}


def run(name: str, argv: list[str]) -> int:
    return int(importlib.import_module(DEMOS[name]).main(argv) or 0)
