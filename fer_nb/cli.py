"""fer-nb: the command line of the fer_nb book (installed by pip install -e .).

    fer-nb check NAME PATH      validate a real dataset folder (same as python -m fer_nb.data check)
    fer-nb book [--scale ...]   execute the notebooks and build the HTML book (what make book runs)
    fer-nb scoreboard           print each paper's claim tested on the recorded runs
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fer-nb", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", metavar="{check,book,scoreboard}")
    sub.add_parser("check", help="validate a dataset folder; `fer-nb check --help` for its options",
                   add_help=False)
    sub.add_parser("book", help="execute every notebook and build the book; `fer-nb book --help`",
                   add_help=False)
    sub.add_parser("scoreboard", help="each paper's headline claim tested on the recorded runs")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "check":
        from fer_nb.data.__main__ import main as data_main

        return data_main(["check", *rest])
    if command == "book":
        from fer_nb.book import main as book_main

        return book_main(rest)
    if command == "scoreboard":
        parser.parse_args(argv)
        import pandas as pd

        from fer_nb import report

        with pd.option_context("display.max_colwidth", 80, "display.width", 200):
            print(report.claims_summary().drop(columns=["claim"]).to_string(index=False))
        return 0
    parser.parse_args(argv)  # unknown command: argparse prints the usage and exits 2
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
