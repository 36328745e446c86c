"""Reading JSON and JSONL input: every failure is one `InputError` naming the file and the line.

JSONL lines are split on "\\n" only (a trailing "\\r" is dropped), never with `str.splitlines()`,
which also breaks at U+2028, U+2029, U+0085 and other characters that valid JSON strings may hold.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError, MalformedJSONError

_JSON_SPACE = " \t\r\n"  # the whitespace JSON allows between values


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 input file as text; a missing file, a directory or undecodable bytes are InputErrors."""
    source = str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} not found", source=source) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a JSON or JSONL file", source=source) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start}): {exc.reason}", source=source) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", source=source) from None


def parse_json(text: str, source: str | None = None, *, record: str | None = None) -> Any:
    """One JSON document. Malformed JSON raises `MalformedJSONError`; nesting deeper than Python
    can parse and integers longer than Python converts (4300 digits) raise `InputError`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}" if record is None else f"column {exc.colno}"
        raise MalformedJSONError(f"malformed JSON: {exc.msg} ({where})", source=source,
                                 record=record) from None
    except RecursionError:
        raise InputError("JSON nested too deeply", source=source, record=record) from None
    except ValueError:  # int("9" * 5000): Python refuses to convert integers that long
        raise InputError(f"a number has more than {sys.get_int_max_str_digits()} digits",
                         source=source, record=record) from None


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each line of `text` that holds more than JSON whitespace, split on
    "\\n" only; "\\r\\n" line ends are accepted."""
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip(_JSON_SPACE):
            yield n, line


def parse_json_lines(text: str, source: str | None = None) -> list[Any]:
    """One JSON value per non-blank line; errors name the line."""
    return [parse_json(line, source, record=f"line {n}") for n, line in jsonl_lines(text)]


def parse_json_or_jsonl(text: str, source: str | None = None) -> Any:
    """The document if `text` is one JSON document, else a list of one value per line (JSONL)."""
    try:
        return parse_json(text, source)
    except MalformedJSONError:
        pass
    return parse_json_lines(text, source)


def read_json_file(path: str | Path) -> Any:
    """A file holding one JSON document, as InputErrors for every way it can fail."""
    source = str(path)
    text = read_text(path)
    if not text.strip():
        raise InputError("file is empty", source=source)
    return parse_json(text, source)
