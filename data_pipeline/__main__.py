"""`python -m data_pipeline {generate,convert,inspect} ...`"""

from __future__ import annotations

import argparse
import logging
import sys

from data_pipeline.spec import DataError


def main(argv: list[str] | None = None) -> int:
    from data_pipeline import convert, inspect, synthetic

    parser = argparse.ArgumentParser(prog="python -m data_pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    synthetic.add_cli(sub)
    convert.add_cli(sub)
    inspect.add_cli(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
