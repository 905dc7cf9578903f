"""`python -m data_pipeline {generate,convert,inspect} ...`"""

from __future__ import annotations

import argparse
import logging
import sys

from data_pipeline.cli import ConfigError
from data_pipeline.spec import DataError


def main(argv: list[str] | None = None) -> int:
    from data_pipeline import cli, convert, inspect, synthetic

    argv = list(sys.argv[1:] if argv is None else argv)
    # each command is a dataclass parsed by tyro (``COMMAND --help``); this parser only picks the
    # command and lists them in ``--help``
    commands = {
        "generate": (synthetic.GenerateConfig, synthetic.run),
        "convert": (convert.ConvertArgs, convert.run),
        "inspect": (inspect.InspectArgs, inspect.run),
    }
    if argv and argv[0] in commands:
        config, run = commands[argv[0]]
        args = cli.parse(config, argv[1:], prog=f"python -m data_pipeline {argv[0]}")
    else:
        parser = argparse.ArgumentParser(prog="python -m data_pipeline", description=__doc__)
        sub = parser.add_subparsers(dest="command", required=True)
        for name, (config, _) in commands.items():
            summary = (config.__doc__ or "").strip().rstrip(".")
            sub.add_parser(name, help=summary[:1].lower() + summary[1:], add_help=False)
        parser.parse_args(argv)  # --help, or no / an unknown command: exits
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
