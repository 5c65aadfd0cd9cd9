"""One level of the hierarchy: the depthwise quantizer and the latent codec that runs the
prior's passes and the range coder over its codes."""
