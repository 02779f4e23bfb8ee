import os

os.environ.setdefault("MPLBACKEND", "Agg")
# torch.compile (backend="compile"): no pool of compile workers per pytest-xdist worker
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
