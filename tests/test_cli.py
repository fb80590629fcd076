"""The `retina-sr` command line as a user meets it: the zoom tool's commands first, the pipeline's
after them, and in every sub-command's --help a one-line description and an example that parses."""

from __future__ import annotations

import re
import shlex

import pytest

from retina_sr.cli import EXAMPLES, USER_COMMANDS, build_parser, walk_commands

PARSER = build_parser()
COMMANDS = [(path, child, line) for path, child, line in walk_commands(PARSER)]


def _help(parser) -> str:
    return parser.format_help()


def test_overview_lists_user_commands_first_then_the_pipeline():
    text = _help(PARSER)
    head, _, rest = text.partition("pipeline and developer commands")
    assert rest, text
    top = [n for n in USER_COMMANDS if re.search(rf"^  {re.escape(n)}\s", head, re.M)]
    assert top == list(USER_COMMANDS)
    positions = [head.index(f"\n  {n} ") for n in USER_COMMANDS]
    assert positions == sorted(positions)  # in the chosen order
    for internal in ("dvc-commit", "train", "tracking", "phantom", "evaluate"):
        assert re.search(rf"^  {internal}\s", rest, re.M), internal
        assert not re.search(rf"^  {internal}\s", head, re.M), internal
    # every top-level command appears exactly once in the overview
    top_level = [p for p, _, _ in COMMANDS if " " not in p]
    for name in top_level:
        assert len(re.findall(rf"^  {re.escape(name)}\s", text, re.M)) == 1, name
    assert "examples:" in text and "retina-sr zoom eye.jpg --zoom 4" in text


@pytest.mark.parametrize("path", [p for p, _, _ in COMMANDS])
def test_every_subcommand_help_has_a_description_and_an_example(path):
    child = {p: c for p, c, _ in COMMANDS}[path]
    text = _help(child)
    assert child.description and child.description.strip(), path
    first = child.description.strip().splitlines()[0]
    assert len(first) > 10, (path, first)
    assert re.search(r"\bexamples?\b", text, re.I), f"`retina-sr {path} --help` shows no example:\n{text}"
    example = text.lower().split("example", 1)[1]
    assert f"retina-sr {path.split()[0]}" in example, f"the example of {path} does not run it:\n{text}"


@pytest.mark.parametrize("path, example", sorted(EXAMPLES.items()))
def test_examples_parse_with_the_current_options(path, example):
    """An example that no longer matches its command's options fails here, not in a user's terminal."""
    argv = shlex.split(example)
    assert argv[0] == "retina-sr" and argv[1:1 + len(path.split())] == path.split(), example
    try:
        PARSER.parse_args(argv[1:])
    except SystemExit as err:  # argparse's usage error
        pytest.fail(f"{example!r} does not parse (exit {err.code})")


def test_help_exits_zero_for_every_subcommand(capsys):
    for path, _, _ in COMMANDS:
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args([*path.split(), "--help"])
        assert info.value.code == 0, path
    assert "usage: retina-sr" in capsys.readouterr().out


def test_overview_examples_parse():
    text = _help(PARSER).split("\nexamples:\n", 1)[1]
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.strip().startswith("retina-sr ")]
    assert len(lines) >= 3
    for example in lines:
        try:
            PARSER.parse_args(shlex.split(example)[1:])
        except SystemExit as err:
            pytest.fail(f"{example!r} does not parse (exit {err.code})")


# ------------------------------------------------ errors: the CLI and the stages map them the same way
def _errors():
    from retina_sr.config import ConfigError
    from retina_sr.data.io import OutputConflictError
    from retina_sr.data.kaggle import KaggleError
    from retina_sr.data.preprocess import TooFewImagesError

    return [(OutputConflictError("data/raw/a.png: move it out"), 2), (KaggleError("no kaggle.json"), 2),
            (TooFewImagesError("2 images"), 2), (ConfigError("train.l1.steps: must be > 0"), 2),
            (FileNotFoundError("data/patches missing"), 2), (RuntimeError("CUDA error"), 1), (OSError("disk full"), 1)]


@pytest.mark.parametrize("index", range(7))
def test_cli_and_stage_give_the_same_exit_status_and_one_line(index, tmp_path, monkeypatch, capsys):
    """`retina-sr train` runs the train stage: an error leaves both with the status of runtime.exit_code
    (before, an output in the way, Kaggle and too-few-images errors were 1 in the CLI and 2 in the stage)."""
    from pathlib import Path

    import retina_sr.training.stage as stage_mod
    from retina_sr.cli import main
    from retina_sr.stages import main as stage_main

    err, expected = _errors()[index]

    def fail(*args, **kwargs):
        raise err

    monkeypatch.setattr(stage_mod, "train", fail)
    params = str(Path(__file__).resolve().parents[1] / "params.yaml")
    argv = ["--phase", "l1", "--params", params, "--threads", "1", "--root", str(tmp_path)]
    assert stage_main("train", argv) == expected
    capsys.readouterr()
    assert main(["train", *argv]) == expected
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == [f"retina-sr train: error: {err}"]


def test_cli_shows_a_bug_with_its_traceback(monkeypatch):
    from pathlib import Path

    import retina_sr.training.stage as stage_mod
    from retina_sr.cli import main

    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(stage_mod, "train", bug)
    with pytest.raises(KeyError):
        main(["train", "--phase", "l1", "--params", str(Path(__file__).resolve().parents[1] / "params.yaml"), "--threads", "1"])


def test_help_does_not_import_torch():
    """`retina-sr --help` builds every sub-command's parser; torch (seconds to import) loads only when a
    command runs (lazy package __init__s, imports inside the command functions)."""
    import subprocess
    import sys

    code = ("import sys; from retina_sr.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'cv2', 'mlflow', 'pandas') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
