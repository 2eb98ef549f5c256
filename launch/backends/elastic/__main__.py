"""`python -m auglocal.launch.backends.elastic [--] FLAGS`, the entry torchrun starts on every rank: `auglocal-launch
--elastic FLAGS`.

It lives apart from the package so that the command line (launch/cli.py, which imports
auglocal.launch.backends.elastic for its
flags and its runner) and this entry point into it do not import each other.
"""

import sys

from auglocal.launch.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:        # `torchrun -m auglocal.launch.backends.elastic -- FLAGS` (docs/several-machines.md)
        args = args[1:]
    return cli_main(["--elastic", *args])


if __name__ == "__main__":
    sys.exit(main())
