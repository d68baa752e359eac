"""Building blocks that see tensors only: radial basis, spherical blocks, MLPs, Update."""
