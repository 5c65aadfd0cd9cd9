"""Decoding without torch: NumPy only."""
