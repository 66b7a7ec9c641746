"""`opay config`: every setting with its current value, default and description.

The README's settings table is `opay config --markdown`, kept between two markers;
`make settings-table` rewrites it and tests/test_config.py fails when it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from opay.settings import Setting, describe, read_environment, shown

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def _default(setting: Setting) -> str:
    return shown(setting.name, setting.default) or "(empty)"


def text() -> str:
    settings = read_environment()
    rows = []
    for setting in describe():
        value = shown(setting.name, getattr(settings, setting.name))
        if setting.name == "operator_token" and not value:
            value = "(random, printed at start)"
        rows.append((setting.variable, value or "(empty)", _default(setting), setting.description))
    rows.insert(0, ("VARIABLE", "VALUE", "DEFAULT", "DESCRIPTION"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "".join(f"{v:<{widths[0]}}  {c:<{widths[1]}}  {d:<{widths[2]}}  {text}\n" for v, c, d, text in rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    lines = ["| Variable | Default | Allowed | Description |", "|---|---|---|---|"]
    for setting in describe():
        default = _default(setting)
        lines.append(
            f"| `{setting.variable}` | {'*(empty)*' if default == '(empty)' else f'`{_cell(default)}`'}"
            f" | {_cell(setting.allowed)} | {_cell(setting.description)}{' (secret)' if setting.secret else ''} |"
        )
    return "\n".join(lines) + "\n"


def readme_with_table(readme: str) -> str:
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return readme[:start] + "\n" + markdown() + readme[end:]


def update_readme(path: str = "README.md") -> None:
    file = Path(path)
    file.write_text(readme_with_table(file.read_text()))


def run(*, as_markdown: bool = False) -> int:
    sys.stdout.write(markdown() if as_markdown else text())
    return 0
