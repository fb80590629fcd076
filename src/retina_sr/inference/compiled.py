"""``torch.compile`` of the pyramid, one static graph per input-shape bucket, with counted compiles.

Dynamo keys its cache on the code object of ``LevelOutput.forward``, shared by every level and
every :class:`~retina_sr.inference.Enhancer` in the process, and after ``recompile_limit`` (8)
entries it used to fall back to eager without an error. Here:

* every call runs with ``dynamic=False`` on a bucketed shape (:mod:`~retina_sr.inference.buckets`),
  so the number of graphs is the number of (level, bucket) pairs used;
* the recompile limit is raised to :data:`MAX_GRAPHS` for these calls and
  ``fail_on_recompile_limit_hit`` is set, so running out of cache entries is an error, never a
  silent eager run;
* compiles are counted per bucket from Dynamo's own counter of compiled graphs
  (``torch._dynamo.utils.counters["stats"]["unique_graphs"]``), so a caller (``retina-sr bench``,
  the tests) can see that panning and zooming within a bucket compile nothing.

On CUDA the mode is ``reduce-overhead``: Inductor records a CUDA graph per shape (cudagraph trees)
on the second call and replays it afterwards; the output buffer of a graph is reused by the next
replay, so :class:`~retina_sr.inference.Enhancer` copies it out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["MAX_GRAPHS", "BucketStats", "CompiledLevels", "compiled_graphs"]

#: graphs (level x shape bucket) one process may compile for the pyramid before it is an error
MAX_GRAPHS = 64


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far (all backends)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@dataclass
class BucketStats:
    """Calls and compiled graphs of one ``(n_up, height, width)`` input shape."""

    calls: int = 0
    compiles: int = 0


class CompiledLevels:
    """One ``torch.compile``d ``LevelOutput`` per pyramid depth, run under counted, bounded compiles.

    Args:
        make_level: ``n_up -> nn.Module`` returning the model's ``2**n_up`` output.
        mode: ``torch.compile`` mode (``reduce-overhead`` on CUDA for CUDA graphs; None on CPU).
        backend: ``torch.compile`` backend (``inductor``; ``eager`` checks the shape logic cheaply).
    """

    def __init__(self, make_level: Callable[[int], torch.nn.Module], mode: str | None = None,
                 backend: str = "inductor") -> None:
        self._make_level = make_level
        self.mode = mode
        self.backend = backend
        self._runners: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.stats: dict[tuple[int, int, int], BucketStats] = {}

    def _runner(self, n_up: int) -> Callable[[torch.Tensor], torch.Tensor]:
        if n_up not in self._runners:
            self._runners[n_up] = torch.compile(self._make_level(n_up), backend=self.backend, dynamic=False,
                                                mode=self.mode or None)
        return self._runners[n_up]

    def __call__(self, x: torch.Tensor, n_up: int) -> torch.Tensor:
        import torch._dynamo

        stats = self.stats.setdefault((n_up, int(x.shape[-2]), int(x.shape[-1])), BucketStats())
        run = self._runner(n_up)
        before = compiled_graphs()
        if x.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        limit = max(MAX_GRAPHS, torch._dynamo.config.recompile_limit)
        try:
            with torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True):
                y = run(x)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            raise RuntimeError(f"torch.compile reached its limit of {limit} graphs for the pyramid ({len(self.stats)} "
                               "input shapes in this process): use a coarser bucket, fewer zoom steps, or "
                               "compile=False") from None
        stats.calls += 1
        stats.compiles += compiled_graphs() - before
        return y

    @property
    def compiles(self) -> int:
        """Graphs compiled by this object's calls."""
        return sum(s.compiles for s in self.stats.values())
