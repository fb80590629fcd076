"""Process-level helpers: the one error -> exit-status mapping, the timing helper."""

from __future__ import annotations

import pytest

from retina_sr.runtime import exit_code, time_call


@pytest.mark.parametrize("err,code", [
    (ValueError("bad value"), 2),
    (FileNotFoundError("no file"), 2),
    (FileExistsError("in the way"), 2),
    (RuntimeError("failed"), 1),
    (OSError("disk"), 1),
    (MemoryError(), 1),
    (KeyError("bug"), None),
    (TypeError("bug"), None),
])
def test_exit_code_mapping(err, code):
    assert exit_code(err) == code


def test_errors_of_the_package_map_to_their_status():
    from retina_sr.config import ConfigError
    from retina_sr.data.io import OutputConflictError
    from retina_sr.data.kaggle import KaggleError
    from retina_sr.data.preprocess import TooFewImagesError
    from retina_sr.models.checkpoint import CheckpointError
    from retina_sr.training.data import PatchDataError

    for err in (ConfigError("k"), OutputConflictError("f"), KaggleError("403"), TooFewImagesError("2"),
                CheckpointError("c"), PatchDataError("p")):
        assert exit_code(err) == 2, type(err).__name__


def test_time_call_counts_calls_and_syncs():
    calls, syncs = [], []
    times = time_call(lambda: calls.append(1), repeats=3, warmup=2, sync=lambda: syncs.append(1))
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert len(calls) == 5 and len(syncs) == 4  # after the warm-up, then after every timed call
