"""The figures lorem-train and lorem-eval write can be read: tick labels that do not
overlap, no offset text colliding with the axis labels."""

import numpy as np
import pytest

from lorem_torch.train.plots import parity_figure, shared_offset


def test_shared_offset_only_for_narrow_bands_far_from_zero():
    assert shared_offset(np.array([-155.312, -155.298])) == pytest.approx(-155.3)
    assert shared_offset(np.array([-2.0, 3.0])) == 0.0  # forces: none
    assert shared_offset(np.array([5.0, 5.0])) == 0.0


def overlapping(labels):
    boxes = [label.get_window_extent() for label in labels if label.get_text()]
    return any(a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False))


@pytest.mark.parametrize("centre", [-1234.5, -156.5, 0.0])
def test_parity_ticks_are_readable(centre):
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    reference = centre + rng.normal(0.0, 0.01, 50)
    predicted = reference + rng.normal(0.0, 0.003, 50)
    fig = parity_figure(reference, predicted, ["a"] * 25 + ["b"] * 25, "energy per atom", "eV/atom")
    fig.canvas.draw()
    (ax,) = fig.axes
    for axis in (ax.xaxis, ax.yaxis):
        assert axis.get_offset_text().get_text() == ""  # matplotlib's offset text is off
        labels = axis.get_ticklabels()
        assert not overlapping(labels)
        assert max(len(label.get_text()) for label in labels) <= 6
    if centre:
        assert f"relative to {centre:g}" in ax.get_xlabel()
    plt.close(fig)
