"""Shipped weights (installed as dqcodec.weights)."""
