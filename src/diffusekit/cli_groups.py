"""Command groups whose sub-commands live in their own modules (``diffusekit audio tts``, ``video sample``).

Each sub-command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit code``; the group
registers them under one ``dest`` and dispatches on it.
"""

from __future__ import annotations

import argparse
import importlib


def add_subcommands(parser, dest: str, modules: dict[str, str]) -> None:
    sub = parser.add_subparsers(dest=dest, required=True)
    for name, module_path in modules.items():
        module = importlib.import_module(module_path)
        sp = sub.add_parser(name, help=module.HELP, description=(module.__doc__ or "").strip() or None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sp)


def run_subcommand(args, dest: str, modules: dict[str, str]) -> int:
    return importlib.import_module(modules[getattr(args, dest)]).run(args)
