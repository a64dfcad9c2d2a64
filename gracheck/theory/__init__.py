"""Layer 3: the paper's derivation and erratum claims, one module per family (paper order)."""
