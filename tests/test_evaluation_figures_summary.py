"""The summary's tables: the checkerboard column bolds the value closest to 1 (like HR), not the lowest."""

from __future__ import annotations

import pandas as pd

from retina_sr.evaluation.report import _best, aggregate, summary_markdown
from retina_sr.evaluation.runner import IMAGE_METRICS, EvaluationResult


def test_checkerboard_best_is_closest_to_one():
    # 0.02 (far smoother than HR) is not better than 1.05 (almost like HR)
    assert _best(pd.Series([7.5, 0.02, 1.05]), "checkerboard") == {2}
    assert _best(pd.Series([0.9, 1.3]), "checkerboard") == {0}
    assert _best(pd.Series([0.9, 1.1]), "checkerboard") == set()  # equally far: no winner
    assert _best(pd.Series([5.0, 0.3, 0.9]), "ms") == {1}  # the others keep their direction
    assert _best(pd.Series([30.0, 31.0]), "psnr_y") == {1}


def _result() -> EvaluationResult:
    rows = []
    for i in range(3):
        for model, cb, p in (("bicubic", 0.2, 28.0), ("l1", 1.02, 30.0), ("adversarial", 2.5, 29.0)):
            r = dict.fromkeys(IMAGE_METRICS, float("nan"))
            r.update({"image_id": f"im{i}", "source": "phantom", "zoom": 4, "model": model, "checkerboard": cb,
                      "psnr_y": p + i * 0.1, "vessel_dice": 0.5, "vessel_cldice": 0.4})
            rows.append(r)
    desc = {"count": 3, "sources": {"phantom": 3}, "size": "64x64", "with_vessel_masks": 0,
            "degradation": "test", "zooms": [4], "peers": [], "peer_notes": []}
    return EvaluationResult(pd.DataFrame(rows), pd.DataFrame(), [], "CPU (test)", desc)


def test_summary_bolds_the_checkerboard_closest_to_hr():
    result = _result()
    text = summary_markdown(result, aggregate(result))
    section = text.split("## Zoom x4", 1)[1].split("\n## ", 1)[0]
    table = [ln for ln in section.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    col = header.index("checkerboard")
    cells = {ln.split("|")[1].strip(): ln.split("|")[col + 1].strip() for ln in table[1:]}
    assert cells["l1"] == "**1.02**"
    assert cells["bicubic"] == "0.2" and cells["adversarial"] == "2.5"
    assert "closest to 1 is bold" in text


def test_initialisation_lines_say_how_each_model_was_made():
    from types import SimpleNamespace

    from retina_sr.evaluation.report import _initialisation

    init = {"path": "models/adversarial/model.pt", "loaded": 10, "skipped": 4}
    models = [SimpleNamespace(name="l1", meta={"phase": "l1", "steps": 3000, "step": 3000}),
              SimpleNamespace(name="modified_subpixel", meta={"phase": "modified", "init_from": init, "steps": 3050,
                                                              "pretrain_steps": 3000, "step": 2750,
                                                              "loss_overrides": {"periodic_weight": 0.3}})]
    lines = _initialisation(SimpleNamespace(models=models))
    text = "\n".join(lines)
    assert "`l1`: from initialisation; 3000 steps; best validation step 3000." in text
    assert "(10 tensors inherited, 4 at initialisation)" in text
    assert "3000 catch-up steps first, as `l1` trains: its lr and schedule, `l1`'s losses with this variant's " \
           "periodic_weight 0.3" in text and "best validation step 2750" in text
