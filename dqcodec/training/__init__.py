"""Training of the transforms and refitting of the prior (not needed to encode or decode)."""
