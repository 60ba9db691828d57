"""Command line: ``sati train | config | search | simulate | promote | evaluate | predict | data ...``.

One module per group of subcommands; each has ``add_parsers(subparsers)`` and sets ``run`` on its
parsers to the function that runs the command. A mistake a user can fix (a bad file, key, value,
run id or model name) ends with one ``error:`` line on stderr and exit status 2. That line is printed
here only: errors carry the file and key, and the line is cut to ``short_text``'s length (a message
may quote a file). Memory exhaustion and runaway recursion end the same way: readers turn them into
errors naming the file; what escapes them still gets one line, not a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from sati.cli import data, models, reproduce, search, simulate, train


def build_parser() -> argparse.ArgumentParser:
    """The ``sati`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="sati", description="SATI multimodal sentiment: train, search, promote")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (train, search, simulate, models, reproduce, data):
        group.add_parsers(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (a renamed config key) as one line; others as Python shows them."""
    from sati.config import DeprecatedKeyWarning

    if issubclass(category, DeprecatedKeyWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["search", "export"]:  # a verb of its own beside `sati search PIPELINE`
        args = search.export_parser().parse_args(argv[2:])
    else:
        args = build_parser().parse_args(argv)
    from sati.checkpoint import CheckpointError
    from sati.config import ConfigError, DeprecatedKeyWarning
    from sati.data.h5format import DataError
    from sati.search.retrain import RetrainError
    from sati.tracking.store import TrackingError
    from sati.untrusted import limits, short_text

    warnings.showwarning = _show_warning
    warnings.simplefilter("always", DeprecatedKeyWarning)
    try:
        limits()  # a malformed SATI_MAX_* variable is refused before anything starts
        return args.run(args)
    except (ConfigError, DataError, CheckpointError, TrackingError, RetrainError, ValueError, OSError) as err:
        print(f"error: {short_text(str(err))}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory (an input larger than this machine can hold, or malformed)", file=sys.stderr)
        return 2
    except RecursionError:
        print("error: an input nested too deeply to process (RecursionError)", file=sys.stderr)
        return 2
