"""Every LapSRN architecture variant a test may need to cover (sharing, recursions, block, upsampler, image
branch): 48 keyword sets for :class:`retina_sr.config.ModelConfig`; and the LR head's trunk options (4 more)."""

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

#: the LR head (``arch="lrhead"``): its trunk's recursions and block
LRHEAD_VARIANTS = [dict(arch="lrhead", recursions=r, block=b) for r, b in itertools.product([1, 2], ["plain", "residual"])]

#: ``@every_arch``: :data:`ALL_VARIANTS` and :data:`LRHEAD_VARIANTS`
every_arch = pytest.mark.parametrize("kw", ALL_VARIANTS + LRHEAD_VARIANTS,
                                     ids=lambda kw: "-".join(str(v) for v in kw.values()))
