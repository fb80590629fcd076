"""Every LapSRN architecture variant a test may need to cover (sharing, recursions, block, upsampler, image
branch): 48 keyword sets for :class:`retina_sr.config.ModelConfig`."""

from __future__ import annotations

import itertools

import pytest

ALL_VARIANTS = [
    dict(share_weights=s, recursions=r, block=b, upsample=u, image_branch=i)
    for s, r, b, u, i in itertools.product([False, True], [1, 2], ["plain", "residual"],
                                           ["deconv", "resize_conv", "subpixel"], ["bicubic", "learned"])
]

#: ``@every_variant`` parametrises a test's ``kw`` argument over :data:`ALL_VARIANTS`
every_variant = pytest.mark.parametrize("kw", ALL_VARIANTS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
