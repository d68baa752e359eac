"""The distributed-mesh machinery of the C++ runtime (cpp/src/mesh.cpp) in one process:
a brick overhanging the periodic mesh folded onto it, the pencil FFT with channels packed
in pairs, a real even kernel, the inverse, and the gather back into the brick, against
numpy's FFT."""

import numpy as np
import pytest
from lorem_torch._core import _mesh_convolve_brick


def reference(brick, brick_lo, mesh, kernel):
    channels = brick.shape[0]
    index = [(np.arange(brick.shape[a + 1]) + brick_lo[a]) % mesh[a] for a in range(3)]
    ii, jj, kk = np.meshgrid(*index, indexing="ij")
    full = np.zeros((channels,) + tuple(mesh))
    for c in range(channels):
        np.add.at(full[c], (ii, jj, kk), brick[c])
    potential = np.fft.ifftn(np.fft.fftn(full, axes=(1, 2, 3)) * kernel, axes=(1, 2, 3))
    return np.real(potential)[:, ii, jj, kk] * np.prod(mesh)  # unnormalised both ways


@pytest.mark.parametrize("channels", [1, 3, 10])
@pytest.mark.parametrize(
    "mesh, brick_lo, brick_shape",
    [
        ((6, 5, 8), (-2, -3, 1), (9, 7, 10)),
        ((4, 4, 4), (0, 0, 0), (4, 4, 4)),
        ((7, 3, 5), (5, -1, -6), (3, 2, 14)),
    ],
)
def test_brick_fft_convolution(channels, mesh, brick_lo, brick_shape):
    rng = np.random.default_rng(channels)
    brick = rng.normal(size=(channels,) + brick_shape)
    kernel = rng.normal(size=mesh)
    # real and even under m -> -m (as the Ewald kernel), so channel pairs never mix
    kernel = 0.5 * (kernel + np.roll(kernel[::-1, ::-1, ::-1], 1, axis=(0, 1, 2)))
    out = _mesh_convolve_brick(brick, brick_lo, mesh, kernel)
    expected = reference(brick, brick_lo, mesh, kernel)
    np.testing.assert_allclose(out, expected, atol=1e-10 * np.abs(expected).max())
