"""Write nodewarden(1) in roff from the argparse tree (so the man page is the --help text): manpage.py VERSION."""

from __future__ import annotations

import argparse
import sys

from agent.cli import build_parser


def roff(text: str) -> str:
    """Escape text for roff (backslashes, leading dots and quotes, hyphens in options)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(words, parser) of every leaf command, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*words, name))
            return
    yield words, parser


def main(version: str) -> str:
    parser = build_parser()
    out = [f'.TH NODEWARDEN 1 "" "nodewarden {roff(version)}" "User Commands"',
           ".SH NAME", "nodewarden \\- per\\-node GPU server monitoring and guarded remediation agent",
           ".SH SYNOPSIS", ".B nodewarden", ".I COMMAND", "[\\fIoptions\\fR]",
           ".SH DESCRIPTION", roff(parser.description or ""),
           "Under systemd it runs as \\fBnodewarden run \\-\\-config /etc/nodewarden/config.yml\\fR "
           "(nodewarden.service; extra arguments in /etc/default/nodewarden).",
           ".SH COMMANDS"]
    for words, sub in commands(parser):
        if not words:
            continue
        out += [".SS " + roff("nodewarden " + " ".join(words)), roff(sub.description or "")]
        usage = sub.format_usage().removeprefix("usage: ").strip()
        out += [".PP", ".nf", roff(usage), ".fi"]
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(action.option_strings) or (action.metavar or action.dest)
            if action.option_strings and action.nargs != 0:
                flags += " " + str(action.metavar or action.dest.upper())
            out += [".TP", "\\fB" + roff(str(flags)) + "\\fR", roff(action.help or "")]
    out += [".SH FILES",
            ".TP", "/etc/nodewarden/config.yml", "the agent's configuration (\\fBnodewarden check config\\fR)",
            ".TP", "/etc/nodewarden/rules/*.yml", "Prometheus rule files evaluated on the node",
            ".TP", "/etc/nodewarden/remediations.yml", "the remediation policy (routes and guard rails)",
            ".TP", "/var/lib/nodewarden", "state: the remediation journal and alert state",
            ".SH SEE ALSO", "/usr/share/doc/nodewarden/README.md.gz, \\fBsystemctl\\fR(1), \\fBpromtool\\fR(1)"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1] if len(sys.argv) > 1 else ""))
