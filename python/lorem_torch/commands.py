"""What every command line shares: --version, and one line on stderr for an error."""

import argparse
import sys
from typing import NoReturn

EXIT_ERROR = 2  # argparse's code for bad usage; used for every input problem
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def version_text() -> str:
    import torch

    from . import __version__

    return f"lorem-torch {__version__} (torch {torch.__version__})"


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s: {version_text()}",
        help="print the version",
    )


def fail(program: str, error: BaseException | str) -> NoReturn:
    """Print `program: error: message` (one line) and exit with EXIT_ERROR."""
    message = " ".join(str(error).split()) if isinstance(error, str) else _one_line(error)
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_ERROR)


def _one_line(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(text.split()) or type(error).__name__
