"""docs/cli-reference.md is written by this module from the parsers themselves, so the page cannot drift from the
flags: tests/launch/test_cli_reference.py regenerates it and fails when the committed page differs.

The rendering is fixed so that it is the same on every machine: a fixed width (not the terminal's `COLUMNS`),
the installed command names as program names (not the script path), and no colour.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

WIDTH = 100
REGENERATE = "python -m auglocal.launch.cli_reference --write"
DOC = Path(__file__).resolve().parents[1] / "docs" / "cli-reference.md"


def build_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parser of each console script in setup.cfg, named as the installed command, formatting at WIDTH
    columns without colour."""
    from auglocal.launch import cli
    from auglocal.launch.report import analyze, compare

    builders = {"auglocal-launch": cli.build_parser, "auglocal-compare": compare.build_parser,
                "auglocal-analyze": analyze.build_parser}
    parsers = {}
    for name, build in builders.items():
        parser = build()
        parser.prog = name
        parser.formatter_class = functools.partial(parser.formatter_class, width=WIDTH)
        if hasattr(parser, "color"):                # Python 3.14 colours help on a terminal
            parser.color = False
        parsers[name] = parser
    return parsers


def render_help(parser: argparse.ArgumentParser) -> str:
    return "\n".join(line.rstrip() for line in parser.format_help().strip("\n").splitlines())


def render() -> str:
    """The whole page: a title, how it was made, then a heading and a fenced `--help` per command."""
    parts = ["# Command-line reference", "",
             "This page is generated from the parsers (`--help` of each command); do not edit it, regenerate it",
             f"with `{REGENERATE}`. [command-line.md](command-line.md) explains the main flags."]
    for name, parser in build_parsers().items():
        parts += ["", f"## {name}", "", "```text", render_help(parser), "```"]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m auglocal.launch.cli_reference",
                                description="Print the command-line reference (Markdown), or write it.")
    p.add_argument("--write", nargs="?", const=str(DOC), default=None, metavar="PATH",
                   help=f"write the page to PATH (default {DOC.relative_to(DOC.parents[1])}) instead of printing it")
    args = p.parse_args(argv)
    text = render()
    if args.write is None:
        sys.stdout.write(text)
    else:
        Path(args.write).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
