"""Layer 0: evidence types, verdict rules, tolerances, statistics, files and input validation."""
