"""gracheck: the machine-checked companion to Kumar & Poole, "On Implicit Regularization in β-VAEs" (ICML 2020)."""

__version__ = "0.1.0"
