"""Procedural fundus phantoms: fundus-like statistics, exact masks, determinism."""

import numpy as np
import pytest

from retina_sr.data.phantom import generate_phantom


@pytest.fixture(scope="module")
def ph():
    return generate_phantom(256, seed=3)


def test_shapes_and_types(ph):
    assert ph.image.shape == (256, 256, 3) and ph.image.dtype == np.uint8
    assert ph.vessels.shape == ph.fov.shape == ph.calibre.shape == (256, 256)
    assert ph.vessels.dtype == bool and ph.fov.dtype == bool and ph.calibre.dtype == np.float32


def test_fundus_statistics(ph):
    fov = ph.fov
    assert 0.55 < fov.mean() < 0.75  # circle of radius ~0.46 * size
    assert ph.image[~fov].mean() < 3  # black surround
    r, g, b = ph.image[fov].reshape(-1, 3).mean(0)
    assert r > g > b and r > 1.5 * g  # orange-red fundus
    vf = ph.vessels[fov].mean()
    assert 0.02 < vf < 0.25
    # vessels darker (green channel) than the non-vessel background
    bg = fov & ~ph.vessels
    assert ph.image[ph.vessels & fov, 1].mean() < ph.image[bg, 1].mean() - 5
    # calibres span thick to sub-pixel-ish
    c = ph.calibre[ph.vessels]
    assert c.max() > 2.5 and c.min() < 1.0
    assert (ph.calibre > 0).sum() == ph.vessels.sum()
    assert not (ph.vessels & ~fov).any()


def test_deterministic_for_seed():
    a, b, c = generate_phantom(192, seed=7), generate_phantom(192, seed=7), generate_phantom(192, seed=8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.calibre, b.calibre)
    assert not np.array_equal(a.image, c.image)


def test_too_small_is_an_error():
    with pytest.raises(ValueError, match="too small"):
        generate_phantom(32)
