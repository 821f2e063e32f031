"""README's flag tables agree with each command's --help: the same flags, the same defaults, and
every allowed value listed.

A README table whose header starts `| flag | default |` documents `mayhem worker`; one headed
`` | `mayhem publish` flag | default | `` (or history) documents that command. In a row, the
first cell names one or more flags, each optionally followed by a placeholder (`--db PATH`), a
list of values (`--store sqlite|postgres|memory`, which must be exactly the allowed ones) or one
value (`--source redis`: a row about that value, whose default cell is not compared). The
default cell, without markup and a trailing remark in parentheses, must be what --help shows
after `=`, or what its text calls `(default ...)`; `none`, `—`, `off` and an empty cell mean
--help shows no default. `as the worker` means the worker's README default for that flag.
"""

import os
import re
import subprocess
import unittest

import harness

README = os.path.join(harness.ROOT, "README.md")
COMMANDS = ("worker", "publish", "history")
NO_DEFAULT = {"", "none", "—", "-", "off"}
# The help text of one option: the option line and its continuation lines.
OPTION = re.compile(r"^  (?:-\w,)?(--[a-z0-9-]+)(.*)$")
# What follows the name on the option line: the type, with a validator's description.
TYPE = re.compile(r"^ ([A-Z]+(?::(?:\{[^}]*\}|[^=\s]+(?: in \[[^\]]*\])?))?)")


def help_options(command):
    """{flag: (first line after the name, whole text)} of `mayhem COMMAND --help`."""
    r = subprocess.run([harness.MAYHEM, command, "--help"], capture_output=True, text=True,
                       timeout=30 * harness.SLOW)
    if r.returncode != 0:
        raise AssertionError("mayhem %s --help exited %d: %s" % (command, r.returncode, r.stderr))
    options, current = {}, None
    for line in r.stdout.splitlines():
        m = OPTION.match(line)
        if m:
            current = m.group(1)
            options[current] = [m.group(2), m.group(2)]
        elif current and line.startswith("   "):
            options[current][1] += " " + line.strip()
        else:
            current = None
    return {k: tuple(v) for k, v in options.items()}


def allowed_values(rest):
    t = TYPE.match(rest)
    m = t and re.search(r":\{([^}]*)\}", t.group(1))
    return set(m.group(1).split(",")) if m else None


def help_default(rest):
    """The text after `=` on the option line (up to the description), or None."""
    t = TYPE.match(rest)
    after = rest[t.end():] if t else rest
    if not after.startswith("="):
        return None
    return re.split(r"\s{2,}", after[1:])[0]


def shows_default(rest, text, d):
    t = TYPE.match(rest)
    after = rest[t.end():] if t else rest
    if after.startswith("=" + d) and after[len(d) + 1:len(d) + 2] in ("", " "):
        return True
    return "(default %s)" % d in text


def plain(cell):
    cell = cell.replace("\\|", "|").replace("**", "").replace("`", "").strip()
    return re.sub(r"\s*\([^()]*\)$", "", cell).strip()


def readme_rows():
    """[(command, line number, [(flag, what follows it)], default cell, whole row)]."""
    rows, command = [], None
    with open(README, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.startswith("|"):
                command = None
                continue
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if len(cells) >= 2 and cells[1] == "default":
                m = re.fullmatch(r"(?:`mayhem (\w+)` )?flag", cells[0])
                command = (m.group(1) or "worker") if m else None
                continue
            if command is None or not cells[0].startswith("`--"):
                continue
            flags = re.findall(r"`(--[a-z0-9-]+)((?:[^`\\]|\\.)*)`", cells[0])
            rows.append((command, n, flags, cells[1], line))
    return rows


class ReadmeAgreesWithHelp(unittest.TestCase):
    maxDiff = None

    def test_flag_tables_agree_with_help(self):
        helps = {c: help_options(c) for c in COMMANDS}
        rows = readme_rows()
        self.assertTrue(rows, "no flag table found in README.md")
        worker_defaults = {f: d for c, _, flags, d, _ in rows if c == "worker"
                           for f, after in flags if not after.strip()}
        problems, documented = [], {c: set() for c in COMMANDS}
        for command, n, flags, default, line in rows:
            for flag, after in flags:
                where = "README.md:%d %s %s" % (n, command, flag)
                documented[command].add(flag)
                if flag not in helps[command]:
                    problems.append("%s: not in `mayhem %s --help`" % (where, command))
                    continue
                rest, text = helps[command][flag]
                allowed = allowed_values(rest)
                value = plain(after.replace("\\|", "|"))
                if "|" in value:
                    if allowed is not None and set(value.split("|")) != allowed:
                        problems.append("%s: README lists %s, --help allows %s"
                                        % (where, sorted(value.split("|")), sorted(allowed)))
                    continue
                if value and value.islower():
                    if allowed is not None and value not in allowed:
                        problems.append("%s: %r is not one of %s" % (where, value, sorted(allowed)))
                    continue  # a row about one value: its default cell is about something else
                if allowed is not None:
                    missing = sorted(v for v in allowed if "`%s`" % v not in line)
                    if missing:
                        problems.append("%s: the row does not name the allowed value(s) %s"
                                        % (where, missing))
                d = plain(default)
                if d == "as the worker":
                    d = plain(worker_defaults.get(flag, ""))
                if d in NO_DEFAULT:
                    if help_default(rest) is not None:
                        problems.append("%s: README says no default, --help shows %r"
                                        % (where, help_default(rest)))
                elif not shows_default(rest, text, d):
                    problems.append("%s: README default %r, --help shows %r"
                                    % (where, d, help_default(rest)))
        for command in COMMANDS:
            for flag in sorted(set(helps[command]) - documented[command] - {"--help"}):
                problems.append("`mayhem %s --help` lists %s; no README flag table has it"
                                % (command, flag))
        self.assertEqual(problems, [])


if __name__ == "__main__":
    unittest.main()
