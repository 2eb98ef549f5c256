"""docs/cli-reference.md is the parsers' `--help`, regenerated here: a flag added without regenerating fails."""

import re

from auglocal.launch.cli_reference import DOC, REGENERATE, build_parsers, render


def test_the_committed_page_is_the_generated_page():
    assert DOC.read_text(encoding="utf-8") == render(), \
        f"docs/cli-reference.md is out of date: run `PYTHONPATH=. {REGENERATE}` and commit it"


def test_every_option_of_every_command_is_on_its_section_of_the_page():
    page = DOC.read_text(encoding="utf-8")
    sections = dict(part.split("\n", 1) for part in page.split("\n## ")[1:])
    parsers = build_parsers()
    assert set(sections) == set(parsers) == {"auglocal-launch", "auglocal-compare", "auglocal-analyze"}
    for name, parser in parsers.items():
        options = [s for action in parser._actions for s in action.option_strings]
        assert options, name
        # a whole option, so that --d is not found in --data-dir
        missing = [s for s in options if not re.search(re.escape(s) + r"(?![\w-])", sections[name])]
        assert missing == [], f"{name}: options missing from docs/cli-reference.md"


def test_the_rendering_does_not_depend_on_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = render()
    monkeypatch.setenv("COLUMNS", "250")
    assert render() == narrow
    monkeypatch.delenv("COLUMNS")
    assert render() == narrow


def test_every_registered_model_is_named_in_the_model_help():
    """A network registered without a word in --help is one a user cannot find (resnetN: the resnet20/32/56/110
    group names the CIFAR depths)."""
    from auglocal.engine.models import model_names

    parser = build_parsers()["auglocal-launch"]
    text = next(a.help for a in parser._actions if "--model" in a.option_strings)
    cifar = re.search(r"resnet([\d/]+) \(CIFAR\)", text)
    depths = cifar.group(1).split("/") if cifar else []
    missing = [name for name in model_names()
               if not re.search(re.escape(name) + r"(?![\w])", text) and name.removeprefix("resnet") not in depths]
    assert missing == [], "registered models missing from --model's help"
