"""Evaluation: data sets, metrics, classic codecs, rate-distortion curves and BD-rate."""
