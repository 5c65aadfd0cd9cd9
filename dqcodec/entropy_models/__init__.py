"""Probability models over code indices: the autoregressive prior (float, for training), the
integer prior derived from it (what coding uses) and the calibration it is derived from."""
