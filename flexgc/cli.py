"""The `flexgc` command line. Each subcommand lives in a module with `register(subparsers)`; this entry
point only parses, configures logging and maps errors to exit codes:

    0    done (a finished job; a worker told to stop)
    1    a runtime failure (failed iterations under --on-deadline fail, a worker's --join-timeout-s, ...)
    2    a configuration error or a refusal retrying cannot fix (bad option, wrong token, port in use)
    74   the run directory could not be written (e.g. a full disk: the job ended, its files intact)
    130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM (a master checkpoints before it exits)
    141  stdout was closed early (piped into `head`): the command stops quietly, like a shell tool

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


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that was chosen, e.g. `flexgc codes check`'s."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, action.dest, None) if action is not None else None
        if action is None or chosen not in action.choices:
            return parser
        parser = action.choices[chosen]


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
    args, extras = parser.parse_known_args(argv)
    if extras:  # argparse would print the top-level usage; the subcommand's own is the helpful one
        _innermost(parser, args).error(f"unrecognized arguments: {' '.join(extras)}")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    configure_logging(args.log_level, args.log_format)
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:
        # the reader went away (`flexgc analyze --json | head`): point stdout at /dev/null so the
        # interpreter's final flush cannot raise again, and end like a shell tool killed by SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
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
