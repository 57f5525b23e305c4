"""Input encodings: multiresolution hash grid (PyTorch reference, fused CPU kernel, tinycudann) and
analytic encodings (spherical harmonics, frequency)."""
