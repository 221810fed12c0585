"""The ``untok`` command: parse arguments, call the Python API, print results.

Every subcommand is a thin wrapper; the work happens in plain functions that are also the
library's API. Problems with the user's input end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from untok.cli.commands import without_nproc
from untok.cli.parser import build_parser
from untok.errors import UntokError

__all__ = ["build_parser", "main", "without_nproc"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)[1:]  # after the subcommand
    try:
        code = args.func(args)
    except UntokError as exc:
        print(f"untok: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("untok: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `untok generate ... | head`
        sys.stderr.close()
        return 0
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
