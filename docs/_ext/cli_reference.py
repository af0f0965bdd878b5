"""``.. anyecho-cli::``: the command-line reference, generated from the parser.

The directive calls a function that returns an :class:`argparse.ArgumentParser`
(by default ``anyecho.cli:build_parser``) and renders the parser and each of its
subcommands: a section per command with its description and usage, then every
argument group with an ``.. option::`` entry per flag, giving its metavar, its help
(``%(default)s`` expanded), its default when the help does not state one, its
choices, and whether it repeats or excludes other flags. Flags hidden with
``argparse.SUPPRESS`` are left out, as ``--help`` leaves them out.

Every flag becomes a link target: ``:option:`anyecho serve --port``` links to
it, and a flag named in another flag's help links to its entry too. A flag added
to the parser appears here at the next build, and a link to a flag that no longer
exists fails the build (``sphinx-build -n -W``).

Options of the directive:

``:parser:``
    ``module:function`` returning the parser (default ``anyecho.cli:build_parser``)
``:heading-chars:``
    underline characters for the command and group headings (default ``-~``)
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, ClassVar
from unittest import mock

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles
from sphinx.util.typing import ExtensionMetadata

__all__ = ["CliDirective", "label", "load_parser", "render", "setup"]

#: The width the usage lines are wrapped at, as if the terminal were this wide.
WIDTH = 88

_SPECIAL = re.compile(r"([\\`*_|<>\[\]])")
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _escape(text: str) -> str:
    """``text`` as reST that shows exactly ``text`` (no inline markup)."""
    return _SPECIAL.sub(r"\\\1", text)


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def load_parser(spec: str) -> argparse.ArgumentParser:
    """Call ``module:function`` and check that it returned an argument parser."""
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    parser = factory()
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"{spec} returned {type(parser).__name__}, not a parser")
    return parser


def _subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """Each subcommand's name, one-line help and parser, in the order added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, subparser in action.choices.items():
                yield name, _one_line(helps.get(name)), subparser


def _visible(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS and not isinstance(
        action, argparse._SubParsersAction
    )


class _Renderer:
    """Turns one parser into reST lines."""

    def __init__(self, parser: argparse.ArgumentParser, underlines: str) -> None:
        self.parser = parser
        self.formatter = parser._get_formatter()
        self.underlines = underlines
        self.flags = {
            flag
            for action in parser._actions
            if _visible(action)
            for flag in action.option_strings
        }
        self.exclusive: dict[argparse.Action, list[argparse.Action]] = {}
        for group in parser._mutually_exclusive_groups:
            for action in group._group_actions:
                others = [a for a in group._group_actions if a is not action]
                self.exclusive[action] = others

    def heading(self, title: str, level: int) -> list[str]:
        char = self.underlines[min(level, len(self.underlines) - 1)]
        return [_escape(title), char * len(_escape(title)), ""]

    def text(self, text: str) -> str:
        """Escaped help text, with the parser's own flags made into links."""
        parts = _FLAG.split(_one_line(text))
        out: list[str] = []
        for index, part in enumerate(parts):
            if index % 2 and part in self.flags:
                out.append(f":option:`{part}`")
            else:
                out.append(_escape(part))
        # A role must be set off from the words around it.
        return re.sub(r"(?<=\S)(:option:`)", r"\\ \1", "".join(out))

    def signature(self, action: argparse.Action) -> str:
        formatter = self.formatter
        if not action.option_strings:
            metavar = formatter._get_default_metavar_for_positional(action)
            return formatter._format_args(action, metavar)
        if action.nargs == 0:
            return ", ".join(action.option_strings)
        metavar = formatter._get_default_metavar_for_optional(action)
        args = formatter._format_args(action, metavar)
        return ", ".join(f"{flag} {args}" for flag in action.option_strings)

    def help(self, action: argparse.Action) -> str:
        if not action.help:
            return ""
        return self.formatter._expand_help(action)

    def fields(self, action: argparse.Action, help_text: str) -> list[str]:
        lines: list[str] = []
        default = action.default
        shows_default = "default" in help_text.lower()
        if (
            action.nargs != 0
            and default is not None
            and default is not argparse.SUPPRESS
            and default != []
            and not shows_default
        ):
            lines.append(f":Default: ``{default}``")
        if action.choices is not None and "{" not in self.signature(action):
            choices = ", ".join(f"``{choice}``" for choice in action.choices)
            lines.append(f":Choices: {choices}")
        if isinstance(action, argparse._AppendAction | argparse._CountAction):
            lines.append(":Repeatable: yes")
        if action in self.exclusive:
            others = ", ".join(
                f":option:`{other.option_strings[0]}`"
                for other in self.exclusive[action]
            )
            lines.append(f":Excludes: {others}")
        return lines

    def option(self, action: argparse.Action) -> list[str]:
        help_text = self.help(action)
        lines = [f".. option:: {self.signature(action)}", ""]
        if help_text:
            lines += [f"   {self.text(help_text)}", ""]
        lines += [f"   {field}" for field in self.fields(action, help_text)]
        return [*lines, ""]

    def groups(self, level: int) -> list[str]:
        lines: list[str] = []
        for group in self.parser._action_groups:
            actions = [a for a in group._group_actions if _visible(a)]
            if not actions:
                continue
            title = group.title or "options"
            lines += self.heading(title[:1].upper() + title[1:], level)
            if group.description:
                lines += [self.text(group.description), ""]
            for action in actions:
                lines += self.option(action)
        return lines

    def command(self, summary: str, level: int) -> list[str]:
        parser = self.parser
        lines = [f".. _{label(parser.prog)}:", ""]
        lines += self.heading(parser.prog, level)
        lines += [f".. program:: {parser.prog}", ""]
        if summary:
            lines += [self.text(summary), ""]
        if parser.description and _one_line(parser.description) != summary:
            lines += [self.text(parser.description), ""]
        usage = parser.format_usage().strip()
        lines += [".. code-block:: text", ""]
        lines += [f"   {line}" for line in usage.splitlines()]
        lines.append("")
        commands = list(_subcommands(parser))
        if commands:
            lines += [f"{self.text('Commands:')}", ""]
            for name, help_text, subparser in commands:
                link = f":ref:`{name} <{label(subparser.prog)}>`"
                lines.append(f"- {link}: {self.text(help_text)}")
            lines.append("")
        lines += self.groups(level + 1)
        if parser.epilog:
            lines += [self.text(parser.epilog), ""]
        return lines


def label(prog: str) -> str:
    """The reST label of a command's section: ``cli-anyecho-serve``."""
    return "cli-" + "-".join(prog.split())


def render(
    parser: argparse.ArgumentParser, underlines: str = "-~^", summary: str = ""
) -> list[str]:
    """reST for ``parser`` and, after it, each of its subcommands (recursively).

    Every command gets a section of its own, at the same level, labelled
    ``cli-`` and its name (``cli-anyecho-serve``). Usage lines are wrapped at
    :data:`WIDTH` columns whatever the terminal.
    """
    with mock.patch.dict(os.environ, {"COLUMNS": str(WIDTH)}):
        lines = _Renderer(parser, underlines).command(summary, 0)
    for _name, sub_summary, subparser in _subcommands(parser):
        lines += render(subparser, underlines, sub_summary)
    return lines


class CliDirective(SphinxDirective):
    """``.. anyecho-cli::``: see the module docstring."""

    has_content = False
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {
        "parser": directives.unchanged,
        "heading-chars": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        spec = self.options.get("parser", "anyecho.cli:build_parser")
        underlines = self.options.get("heading-chars", "-~^")
        try:
            parser = load_parser(spec)
        except Exception as exc:  # any import or call error: report, do not crash
            raise self.error(f"cannot build the parser {spec}: {exc}") from exc
        lines = render(parser, underlines)
        container = nodes.section()
        container.document = self.state.document
        source = f"<anyecho-cli {spec}>"
        content = StringList(lines, source=source)
        nested_parse_with_titles(self.state, content, container)
        return list(container.children)


def setup(app: Sphinx) -> ExtensionMetadata:
    app.add_directive("anyecho-cli", CliDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
