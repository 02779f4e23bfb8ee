"""fromscratch: the core of deep learning written by hand, and proven right against torch."""
__version__ = "0.1.0"
