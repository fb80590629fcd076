"""``retina-sr bench-train``: real training steps timed on synthetic patches."""

from __future__ import annotations

import pytest

from retina_sr.training.bench import bench_train, format_results, parse_size


def test_parse_size():
    assert parse_size("demo") == (16, 3) and parse_size("full") == (64, 10) and parse_size("F8D2") == (8, 2)
    with pytest.raises(ValueError, match="unknown model size"):
        parse_size("huge")


def test_bench_measures_pixel_and_perceptual_steps():
    res = bench_train(sizes=["F4D1"], steps=2, device="cpu", batch_size=2, crop=32, warmup=1)
    assert [r["loss"] for r in res] == ["pixel", "pixel+perceptual+saliency"]
    for r in res:
        assert r["steps_per_s"] > 0 and r["batch"] == 2 and r["crop"] == 32 and r["amp_bf16"] is False
    text = format_results(res)
    assert "F4D1" in text and "steps/s" in text and "crop" in text


def test_bench_cli(capsys, monkeypatch, repo_root):
    from retina_sr.cli import main

    monkeypatch.chdir(repo_root)
    assert main(["bench-train", "--sizes", "F4D1", "--steps", "1", "--warmup", "0", "--batch", "2", "--crop", "32",
                 "--no-perceptual", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "F4D1" in out and "pixel" in out and "[1, 2, 4, 8]" in out
    assert main(["bench-train", "--sizes", "nope"]) == 2
