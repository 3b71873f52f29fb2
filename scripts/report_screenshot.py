"""Regenerate the README's screenshot of a report page: ``make report-screenshot`` (RUN=folder).

Writes RUN/report.html (``bioattn report RUN``) and saves the first screen of it, as headless
Chromium shows it at 1280 × 900 CSS pixels, to the PNG given (default docs/report.png). Fails
when the page logs a console error, fetches anything from outside or leaves a figure empty.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bioattn.report import write_report
from bioattn.report.browser import inspect_page


def main(argv: list[str] | None = None) -> int:
    """Write the report of RUN and its screenshot; print where both went."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="results folder (e.g. runs/demo)")
    parser.add_argument("png", type=Path, nargs="?", default=Path("docs/report.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    page = write_report(args.run_dir)
    seen = inspect_page(page, screenshot=args.png, width=args.width, height=args.height)
    problems = seen.console_errors + [f"request to {u}" for u in seen.external_requests]
    problems += [f"figure {f} is empty" for f in seen.empty]
    if problems:
        print("the page has problems:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"{page}: {seen.drawn} figures, {seen.tables} tables; screenshot {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
