"""Writes the commands page's reference from batchrun's argparse parser (run by cog).

`docs/commands.md` holds a cog block that calls `markdown()`; `tests/test_docs.py` fails when
the committed page differs from what the parser gives now. To regenerate:
`python -m cogapp -r docs/commands.md` from the repository's root.

The parser is found through the `batchrun` console script named in pyproject.toml, so the
page follows the command line wherever its module lives. The text is built from the parser's
actions, not from `format_help()`, whose layout changes between Python versions.
"""

from __future__ import annotations

import argparse
import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    module_name = scripts["project"]["scripts"]["batchrun"].partition(":")[0]
    module = importlib.import_module(module_name)
    parser: argparse.ArgumentParser = module._parser()
    return parser


def _subcommands(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError("the parser has no subcommands")


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        params = {**vars(action), "prog": prog}
        if action.choices is not None:
            params["choices"] = ", ".join(str(c) for c in action.choices)
        text = text % params
    return " ".join(text.split())


def _usage_part(action: argparse.Action) -> str:
    if not action.option_strings:
        metavar = action.metavar or action.dest.upper()
        return f"{metavar}…" if action.nargs in ("+", "*") else str(metavar)
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        part = flag
    elif action.choices is not None and action.metavar is None:
        part = f"{flag} {{{','.join(str(c) for c in action.choices)}}}"
    else:
        part = f"{flag} {action.metavar or action.dest.upper()}"
    if isinstance(action, argparse._AppendAction):
        return f"[{part}]…"
    return part if action.required else f"[{part}]"


def _name(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    flags = ", ".join(f"`{f}`" for f in sorted(action.option_strings, key=len, reverse=True))
    if action.nargs == 0:
        return flags
    if action.choices is not None and action.metavar is None:
        return f"{flags} `{{{','.join(str(c) for c in action.choices)}}}`"
    return f"{flags} `{action.metavar or action.dest.upper()}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _tables(parser: argparse.ArgumentParser, prog: str) -> list[str]:
    lines: list[str] = []
    plain = ("positional arguments", "options", "optional arguments")
    groups: list[tuple[str, list[argparse.Action]]] = [("", [])]
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        ]
        if group.title in plain:
            groups[0][1].extend(actions)  # one table for the arguments of no named group
        elif actions:
            groups.append((group.title or "", actions))
    for title, actions in groups:
        if not actions:
            continue
        if title:
            lines += [f"*{title}*", ""]
        lines += ["| argument | what it does |", "| --- | --- |"]
        lines += [f"| {_cell(_name(a))} | {_cell(_help(a, prog))} |" for a in actions]
        lines.append("")
    return lines


def markdown() -> str:
    """The reference part of docs/commands.md, from the parser as it is now."""
    parser = _parser()
    prog = parser.prog
    commands = _subcommands(parser)
    helps = {a.dest: a.help for a in commands._choices_actions}
    options = [
        _usage_part(a)
        for a in parser._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    ]
    lines = [
        "```",
        " ".join([prog, *options, "COMMAND …"]),
        "```",
        "",
        " ".join((parser.description or "").split()),
        "",
    ]
    lines += _tables(parser, prog)
    lines += ["| command | what it does |", "| --- | --- |"]
    lines += [
        f"| [`{name}`](#{prog}-{name}) | {_cell(helps.get(name) or '')} |"
        for name in commands.choices
    ]
    lines.append("")
    for name, sub in commands.choices.items():
        parts = [_usage_part(a) for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        lines += [
            f"## {prog} {name}",
            "",
            "```",
            " ".join([prog, name, *parts]),
            "```",
            "",
            " ".join((sub.description or helps.get(name) or "").split()),
            "",
        ]
        lines += _tables(sub, f"{prog} {name}")
    if parser.epilog:
        text = " ".join(parser.epilog.split())
        lines += ["## Exit codes", "", text[0].upper() + text[1:], ""]
    return "\n".join(lines)
