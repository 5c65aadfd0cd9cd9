"""The hierarchical DQ autoencoder, its configuration, tiled transforms and the encoder-side
search."""
