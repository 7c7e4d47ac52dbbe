"""The `flexgc` command line. Each subcommand lives in a `cmd_*` module with `register(subparsers)`;
this entry point only parses, configures logging and maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys

from flexgc import __version__
from flexgc.common.errors import ConfigError, FlexgcError

_COMMAND_MODULES = ("flexgc.cmd_analyze", "flexgc.cmd_services", "flexgc.bench", "flexgc.soak",
                    "flexgc.report.cmd",
                    "flexgc.harness.cli")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="flexgc", description=__doc__ and "Straggler-tolerant distributed "
                                     "gradient descent with nested gradient codes.")
    parser.add_argument("--version", action="version", version=f"flexgc {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        import json

        class _Json(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return json.dumps({"ts": record.created, "level": record.levelname, "logger": record.name,
                                   "msg": record.getMessage()})

        handler.setFormatter(_Json())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure_logging(args.log_level, args.log_format)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"flexgc: configuration error: {exc}", file=sys.stderr)
        return 2
    except FlexgcError as exc:
        print(f"flexgc: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
