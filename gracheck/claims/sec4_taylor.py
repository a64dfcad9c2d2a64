"""Claims of the paper (being written)."""
