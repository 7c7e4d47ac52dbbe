"""The `flexgc` command line. Each subcommand lives in a module with `register(subparsers)`; this entry
point only parses, configures logging and maps errors to exit codes:

    0    done (a finished job; a worker told to stop)
    1    a runtime failure (failed iterations under --on-deadline fail, a worker's --join-timeout-s, ...)
    2    a configuration error or a refusal retrying cannot fix (bad option, wrong token, port in use)
    74   the run directory could not be written (e.g. a full disk: the job ended, its files intact)
    130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM (a master checkpoints before it exits)

Errors are one line on stderr; logs go to stderr too, and machine-readable JSON lines to stdout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flexgc import __version__
from flexgc.common.errors import ConfigError, FlexgcError, StorageError

_COMMAND_MODULES = ("flexgc.cmd_analyze", "flexgc.cmd_services", "flexgc.bench", "flexgc.soak",
                    "flexgc.report.cmd",
                    "flexgc.harness.cli")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="flexgc", description=__doc__ and "Straggler-tolerant distributed "
                                     "gradient descent with nested gradient codes.")
    parser.add_argument("--version", action="version", version=f"flexgc {__version__}")
    add_logging_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != name:
                raise
            continue
        module.register(sub)
    for name, command in sub.choices.items():  # also accepted after the subcommand: flexgc master --log-level
        add_logging_options(command, argparse.SUPPRESS)
        if name not in ("master", "worker"):  # their options say env, default and allowed values themselves
            show_defaults(command)
    return parser


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Make --help show every option's default (and its subcommands' too)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                show_defaults(child)
            continue
        if not action.option_strings or action.default is None or action.default is False or \
                action.default is argparse.SUPPRESS:
            continue
        if action.help is None or "default" not in action.help:
            action.help = f"{action.help or ''} (default: %(default)s)".lstrip()


def add_logging_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--log-level", default=default or "INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default INFO)")
    parser.add_argument("--log-format", default=default or "text", choices=["text", "json"],
                        help="log lines as text or JSON (default text)")


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
    # gRPC core's own log lines (failed binds, TLS handshakes) repeat what flexgc reports in one line;
    # GRPC_VERBOSITY=ERROR (or DEBUG) in the environment brings them back
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
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
    except StorageError as exc:
        print(f"flexgc: {exc}", file=sys.stderr)
        return 74
    except FlexgcError as exc:
        print(f"flexgc: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
