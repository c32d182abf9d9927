"""picsl-greedy backend: known rigid motions recovered, matrices in ITK's convention."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from btpipe.preprocess import register as reg
from btpipe.preprocess.greedy import greedy_linear


@pytest.fixture(scope="module")
def atlas_4mm(testdata):
    from btpipe.preprocess import atlas_grid

    atlas = atlas_grid(testdata / "atlas" / "sri24" / "t1_brain.nii.gz", 4.0)
    return reg._normalise_for_registration(atlas, atlas.new_image_like(
        (atlas.numpy() > 0).astype(np.float32)))


def _rigid_motion(degrees, shift, centre):
    """4x4 LPS matrix: rotation about x through ``centre`` then ``shift`` (mm)."""
    a = np.radians(degrees)
    r = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = centre - r @ centre + np.asarray(shift, float)
    return m


def test_swap_ras_lps_flips_the_first_two_axes():
    m = np.eye(4)
    m[:3, 3] = [1.0, 2.0, 3.0]
    np.testing.assert_allclose(reg.swap_ras_lps(m)[:3, 3], [-1.0, -2.0, 3.0])
    np.testing.assert_allclose(reg.swap_ras_lps(reg.swap_ras_lps(m)), m)


def test_greedy_recovers_a_known_rigid_motion(atlas_4mm, tmp_path):
    """The atlas moved by 6 deg and (4, -3, 5) mm: greedy's .mat, read as ITK
    reads it, undoes the motion to within 1 deg and 1 mm at the brain centre."""
    import ants

    centre = np.array(ants.get_center_of_mass(atlas_4mm))
    truth = _rigid_motion(6.0, (4.0, -3.0, 5.0), centre)  # fixed point -> moving point
    reg.write_itk_matrix(truth, tmp_path / "truth.mat")
    # moving(truth(x)) = fixed(x): resample the fixed image with the inverse motion.
    reg.write_itk_matrix(np.linalg.inv(truth), tmp_path / "inverse.mat")
    moving = ants.apply_transforms(atlas_4mm, atlas_4mm, [str(tmp_path / "inverse.mat")],
                                   interpolator="linear")
    found = greedy_linear(atlas_4mm, moving, tmp_path / "found.mat", dof=6,
                          initial="identity", iterations=(100, 50), threads=1)
    error = np.linalg.inv(truth) @ reg.matrix_of(found)
    angle, shift = reg.rigid_residual(error, centre)
    assert angle < 1.0 and shift < 1.0, (angle, shift)


def test_greedy_matrix_resamples_like_greedy_itself(atlas_4mm, tmp_path):
    """ANTs resampling through an ITK .mat equals greedy's own reslicing
    (-rf/-rm) through the same matrix in RAS: the two conventions agree."""
    import ants
    from picsl_greedy import Greedy3D

    fixed_path, moving_path = tmp_path / "fixed.nii.gz", tmp_path / "moving.nii.gz"
    ants.image_write(atlas_4mm, str(fixed_path))
    centre = np.array(ants.get_center_of_mass(atlas_4mm))
    motion = _rigid_motion(-5.0, (3.0, 2.0, -4.0), centre)
    reg.write_itk_matrix(motion, tmp_path / "m.mat")
    ants.image_write(ants.apply_transforms(atlas_4mm, atlas_4mm, [str(tmp_path / "m.mat")]),
                     str(moving_path))
    moving = ants.image_read(str(moving_path))
    found = greedy_linear(atlas_4mm, moving, tmp_path / "found.mat", dof=6,
                          initial="identity", iterations=(100, 50), threads=1)
    ours = ants.apply_transforms(atlas_4mm, moving, [str(found)], interpolator="linear")
    np.savetxt(tmp_path / "ras.mat", reg.swap_ras_lps(reg.matrix_of(found)))
    Greedy3D().execute(f"-d 3 -rf {fixed_path} -rm {moving_path} {tmp_path / 'theirs.nii.gz'} "
                       f"-r {tmp_path / 'ras.mat'}")
    theirs = reg.nib_to_ants(nib.load(str(tmp_path / "theirs.nii.gz")))
    brain = atlas_4mm.numpy() > 0.05
    assert brain.sum() > 1000
    assert np.abs(ours.numpy() - theirs.numpy())[brain].max() < 0.02
    # moving(x) = fixed(motion(x)), so greedy's answer is the inverse motion.
    assert reg.rigid_residual(motion @ reg.matrix_of(found), centre)[0] < 1.0


def test_greedy_refuses_a_constant_image(atlas_4mm, tmp_path):
    """An empty moving image: greedy itself returns a transform; btpipe refuses."""
    empty = atlas_4mm.new_image_like(np.zeros(atlas_4mm.shape, np.float32))
    with pytest.raises(ValueError, match="moving image is constant"):
        greedy_linear(atlas_4mm, empty, tmp_path / "x.mat", iterations=(10,), threads=1)


def test_greedy_reruns_with_one_seed_are_identical(atlas_4mm, tmp_path):
    """Greedy jitters its sample points from the clock unless seeded: btpipe
    seeds it, so one thread and one seed give the same matrix twice."""
    moving = atlas_4mm.new_image_like(np.roll(atlas_4mm.numpy(), 2, axis=0))
    runs = [reg.matrix_of(greedy_linear(atlas_4mm, moving, tmp_path / f"{i}.mat",
                                        initial="identity", iterations=(50, 20), threads=1,
                                        seed=3))
            for i in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
