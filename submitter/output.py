"""How every ``jobq`` command prints data: ``-o table`` (aligned columns under a header),
``-o json`` or ``-o yaml``, written once here and used by every command that prints data.

A command passes JSON-like data (what ``model_dump(mode="json")`` gives) and, for the table, the
columns to show::

    @output.output_option()                      # -o/--output table|json|yaml
    def list_(output_format: str) -> None:
        output.emit(rows, output_format, columns=[output.Column("ID", "spec.id"), ...])

JSON and YAML print the data as it is (every field, whatever the columns); the table shows the
columns, one row per item, or a FIELD/VALUE listing for one object.

YAML is written by ``to_yaml`` below (block style; a string is quoted, JSON-style, whenever YAML
1.1 or 1.2 would read it as something else), not by PyYAML: PyYAML is no dependency of jobq's
(only of the chaos and kubernetes extras), and the client's base install is meant to stay light
(nats-py, pydantic, click). Output only needs the JSON subset, which is small to write correctly;
tests/unit/test_output.py reads it back with PyYAML for arbitrary data.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import click

Format = Literal["table", "json", "yaml"]
FORMATS: tuple[Format, ...] = ("table", "json", "yaml")
F = TypeVar("F", bound=Callable[..., Any])
VALUE_WIDTH = 200
"""A one-object table cuts a longer value (a letter's payload, a big output) here: -o json has it all."""


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its header and where its cell comes from in a row (a dotted path into
    the row's dict, or a function of the row)."""

    header: str
    value: str | Callable[[Any], Any]
    max_width: int | None = None
    """Cut longer cells to this many characters (ending in ``…``); None: never."""

    def cell(self, row: Any) -> str:
        found = self.value(row) if callable(self.value) else lookup(row, self.value)
        text = "-" if found is None or found == "" else _scalar_text(found)
        text = " ".join(text.split())  # one line per row
        if self.max_width is not None and len(text) > self.max_width:
            text = text[: self.max_width - 1] + "…"
        return text


def lookup(row: Any, path: str) -> Any:
    """``row["a"]["b"]`` for ``"a.b"``; None where a step is missing."""
    for step in path.split("."):
        if not isinstance(row, dict):
            return None
        row = row.get(step)
    return row


def output_option(*, default: Format | None = "table", formats: Sequence[Format] = FORMATS,
                  json_alias: bool = False, help: str = "") -> Callable[[F], F]:
    """``-o/--output FORMAT`` on a command, given to it as ``output_format`` (None when the
    command has no default and none was given). ``json_alias`` also accepts the older ``--json``
    flag (hidden, deprecated: the same as ``-o json``)."""

    def decorate(f: F) -> F:
        said = f"Print as {', '.join(formats[:-1])} or {formats[-1]}." if len(formats) > 1 else ""
        option = click.option(
            "-o", "--output", "output_format", type=click.Choice(list(formats)), default=default,
            show_default=default is not None, help=help or said)
        if not json_alias:
            return option(f)

        @functools.wraps(f)
        def wrapper(*args: Any, json_alias_flag: bool, **kwargs: Any) -> Any:
            if json_alias_flag:
                kwargs["output_format"] = "json"
            return f(*args, **kwargs)

        flag = click.option("--json", "json_alias_flag", is_flag=True, hidden=True,
                            help="Deprecated: the same as -o json.")
        return option(flag(wrapper))  # type: ignore[return-value]

    return decorate


def emit(data: Any, fmt: str, *, columns: Sequence[Column | str] | None = None,
         text: Callable[[], Iterable[str]] | None = None) -> None:
    """Print ``data`` (JSON-like) to stdout as ``fmt``. For ``table``: ``text`` when given (a
    command's own human view), else a table of ``columns`` for a list, or FIELD/VALUE rows for
    one object."""
    click.echo(render(data, fmt, columns=columns, text=text), nl=False)


def render(data: Any, fmt: str, *, columns: Sequence[Column | str] | None = None,
           text: Callable[[], Iterable[str]] | None = None) -> str:
    """What ``emit`` prints (ending in a newline)."""
    if fmt == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    if fmt == "yaml":
        return to_yaml(data)
    if fmt != "table":
        raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    if text is not None:
        return "".join(line + "\n" for line in text())
    if isinstance(data, list):
        return table(data, columns or _columns_of(data))
    if isinstance(data, dict):
        return table([{"field": k, "value": v} for k, v in data.items()],
                     [Column("FIELD", "field"), Column("VALUE", "value", max_width=VALUE_WIDTH)])
    return _scalar_text(data) + "\n"


def table(rows: Sequence[Any], columns: Sequence[Column | str]) -> str:
    """Aligned columns under an upper-case header, two spaces apart; the last column unpadded.
    The header is printed even when there are no rows."""
    cols = [c if isinstance(c, Column) else Column(c.upper(), c) for c in columns]
    grid = [[c.header for c in cols], *([c.cell(row) for c in cols] for row in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(cols))]
    out = []
    for line in grid:
        cells = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=False)] + line[-1:]
        out.append("  ".join(cells).rstrip() + "\n")
    return "".join(out)


def _columns_of(rows: Sequence[Any]) -> list[Column | str]:
    keys: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            keys.update(dict.fromkeys(row))
    return list(keys) or [Column("VALUE", lambda row: row)]


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


# --- YAML ---------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_/(][A-Za-z0-9_ .,/()+@=-]*")
"""Strings safe to write unquoted (block context): no indicator first, no ': ' or ' #'."""
_RESERVED = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", ""}
_UNPRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")
"""What YAML may not hold raw in a quoted scalar (plus line separators and the BOM): escaped."""
_NUMBER = re.compile(r"[-+]?(\.?[0-9]|\.(inf|nan))", re.IGNORECASE)


def to_yaml(data: Any) -> str:
    """``data`` (JSON-like: dicts with string keys, lists, str, int, float, bool, None) as a
    YAML document in block style; ``yaml.safe_load`` of it gives ``data`` back."""
    return "\n".join(_yaml_lines(data, 0)) + "\n"


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, dict) and value:
        return [line for key, item in value.items()
                for line in _yaml_member(f"{pad}{_yaml_string(str(key))}:", item, indent + 2)]
    if isinstance(value, list | tuple) and value:
        lines = []
        for item in value:
            if isinstance(item, dict) and item:  # "- key: value", the other keys aligned under it
                inner = _yaml_lines(item, indent + 2)
                lines += [f"{pad}- {inner[0].lstrip()}", *inner[1:]]
            else:
                lines += _yaml_member(f"{pad}-", item, indent + 2)
        return lines
    return [pad + _yaml_scalar(value, indent)]


def _yaml_member(head: str, item: Any, indent: int) -> list[str]:
    if isinstance(item, dict | list | tuple) and item:
        return [head, *_yaml_lines(item, indent)]
    return [f"{head} {_yaml_scalar(item, indent)}"]


def _yaml_scalar(value: Any, indent: int) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)  # YAML 1.1 (PyYAML) reads "1e+20" as a string: write "1.0e+20"
        return text.replace("e", ".0e") if "e" in text and "." not in text else text
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list | tuple):
        return "[]"
    text = str(value)
    if "\n" in text and _literal_ok(text):
        body, chomp = text, "-"  # strip: no final line break
        if text.endswith("\n"):
            body, chomp = text[:-1], ("+" if text.endswith("\n\n") else "")  # keep / clip
        pad = " " * max(indent, 2)
        return f"|{chomp}\n" + "\n".join(pad + line if line else "" for line in body.split("\n"))
    return _yaml_string(text)


def _literal_ok(text: str) -> bool:
    """A literal block keeps the text as it is, if every character may appear in one and the
    first line does not start with a space (that would need an indentation indicator)."""
    return all(c.isprintable() or c == "\n" for c in text) and not text.startswith((" ", "\n")) \
        and not _UNPRINTABLE.search(text.replace("\n", ""))


def _yaml_string(text: str) -> str:
    plain = (_PLAIN.fullmatch(text) is not None and text.lower() not in _RESERVED
             and not _NUMBER.match(text) and not text.endswith(" ") and " #" not in text)
    if plain:
        return text
    # A JSON string is a YAML double-quoted scalar; characters YAML may not hold raw are escaped.
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))
