"""Test-time mirroring: which flips each `tta` setting averages, on any storage order."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from btpipe.errors import ConfigError
from btpipe.segment.infer import FLIP_SETS, ensemble_probabilities, tta_flips
from btpipe.segment.networks import LoadedModel

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Same head stored with the array axes permuted: y (A-P) first, x (L-R) second.
PERMUTED = np.array([[0.0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


class RampNet(torch.nn.Module):
    """Logits = input + a ramp along one array axis: not mirror-symmetric, so
    averaging over a mirror shows up as symmetry along that mirror's axis."""

    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        n = x.shape[2 + self.axis]
        shape = [1, 1, 1, 1, 1]
        shape[2 + self.axis] = n
        ramp = torch.linspace(-3, 3, n).reshape(shape)
        return x[:, :3] + ramp


def test_tta_settings():
    assert tta_flips("none", LPS) == [()] and tta_flips(False, LPS) == [()]
    assert tta_flips("all", LPS) == FLIP_SETS == tta_flips(True, LPS) and len(FLIP_SETS) == 8
    assert tta_flips("lr", LPS) == [(), (2,)]
    assert tta_flips("lr", PERMUTED) == [(), (3,)]
    assert nib.aff2axcodes(PERMUTED)[1] in "LR"
    with pytest.raises(ConfigError, match="segmentation.tta"):
        tta_flips("sideways", LPS)


@pytest.mark.parametrize("affine,lr_axis", [(LPS, 0), (PERMUTED, 1)])
def test_lr_mirroring_makes_the_output_symmetric_left_right_only(affine, lr_axis):
    image = np.zeros((4, 8, 10, 6), np.float32)
    other = 1 - lr_axis  # the A-P axis of the array: must stay as the net made it
    for axis, symmetric in ((lr_axis, True), (other, False)):
        model = LoadedModel(module=RampNet(axis), roi_size=[8, 10, 6], network="ramp",
                            normalize=False)
        params = {"tta": "lr", "sw_batch_size": 1}
        mean, std, n = ensemble_probabilities([model], image, params, torch.device("cpu"), affine)
        assert n == 2
        mirrored = np.flip(mean, axis=1 + axis)
        assert np.allclose(mean, mirrored, atol=1e-6) == symmetric
        assert (std.max() > 1e-3) == symmetric  # the two members disagree only on a L-R ramp


class ShiftNet(torch.nn.Module):
    """Logits = the first three channels + 2: high probability wherever it is run."""

    def forward(self, x):
        return x[:, :3] + 2.0


def test_probabilities_are_computed_in_the_brain_box_and_zero_outside():
    """Windows run only over the box of non-zero input voxels (the skull-stripped brain);
    outside it the probabilities are 0, inside they are the network's."""
    image = np.zeros((4, 20, 18, 16), np.float32)
    image[:, 5:12, 4:15, 3:9] = 1.0
    image[0, 6, 6, 6] = 0.0  # a zero voxel inside the box is still segmented
    model = LoadedModel(module=ShiftNet(), roi_size=[8, 8, 8], network="shift", normalize=False)
    mean, std, n = ensemble_probabilities([model], image, {"tta": "none", "sw_batch_size": 2},
                                          torch.device("cpu"), LPS)
    assert mean.shape == (3, 20, 18, 16) and n == 1
    inside = np.zeros(mean.shape[1:], bool)
    inside[5:12, 4:15, 3:9] = True
    assert np.all(mean[:, ~inside] == 0) and np.all(std == 0)
    expected = 1 / (1 + np.exp(-(image[:3] + 2.0)))
    assert np.allclose(mean[:, inside], expected[:, inside], atol=1e-5)
