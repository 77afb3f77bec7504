"""Checkable constraints on generated text: the CONSTRAINTS registry, one pure checker per constraint type.

A constraint is `{"type": <name>, "value": <argument>}`; its checker `(text, value) -> bool` reads the
continuation's decoded text only. Words are whitespace-separated tokens; lines are non-blank lines;
`include` / `exclude` match whole words, case-insensitively. `json` and `python_function` read the
first fenced code block (```...```) when the text has one, else the whole text (stripped).
"""
from __future__ import annotations

import ast
import json
import re
from typing import Callable

from interventions.registry import AtlasError, Registry

Checker = Callable[[str, object], bool]
CONSTRAINTS: Registry[Checker] = Registry("constraint type")
FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)  # an opening fence, its body, the closing fence (or the end)


def words(text: str) -> list[str]:
    return text.split()


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def code_block(text: str) -> str:
    """The body of the first fenced block (an unclosed one runs to the end), else the whole text; stripped."""
    found = FENCE.search(text)
    return (found.group(1) if found else text).strip()


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.I) is not None


@CONSTRAINTS.register("min_words")
def min_words(text: str, value: int) -> bool:
    return len(words(text)) >= value


@CONSTRAINTS.register("max_words")
def max_words(text: str, value: int) -> bool:
    return len(words(text)) <= value


@CONSTRAINTS.register("min_lines")
def min_lines(text: str, value: int) -> bool:
    return len(lines(text)) >= value


@CONSTRAINTS.register("max_lines")
def max_lines(text: str, value: int) -> bool:
    return len(lines(text)) <= value


@CONSTRAINTS.register("include")
def include(text: str, value: list[str]) -> bool:
    """Every listed word appears."""
    return all(_has_word(text, w) for w in value)


@CONSTRAINTS.register("exclude")
def exclude(text: str, value: list[str]) -> bool:
    """None of the listed words appears."""
    return not any(_has_word(text, w) for w in value)


@CONSTRAINTS.register("json")
def valid_json(text: str, value: object = None) -> bool:
    """The code (block) is valid JSON; with value "object" or "array", of that type."""
    try:
        parsed = json.loads(code_block(text))
    except ValueError:
        return False
    return {"object": isinstance(parsed, dict), "array": isinstance(parsed, list)}.get(value, True)


@CONSTRAINTS.register("python_function")
def python_function(text: str, value: str) -> bool:
    """The code (block) parses as Python (ast) and defines a function named `value` (at any depth)."""
    try:
        tree = ast.parse(code_block(text))
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == value for n in ast.walk(tree))


def check(constraint: dict) -> None:
    """A constraint's shape: a registered type and a value of the type its checker reads; raises AtlasError."""
    name, value = constraint.get("type"), constraint.get("value")
    CONSTRAINTS.get(name)
    ok = {"min_words": int, "max_words": int, "min_lines": int, "max_lines": int, "python_function": str}.get(name)
    if ok is not None and not isinstance(value, ok):
        raise AtlasError(f"constraint {name}: value {value!r} is not a {ok.__name__}")
    if name in ("include", "exclude") and not (isinstance(value, list) and value and all(
            isinstance(w, str) and w for w in value)):
        raise AtlasError(f"constraint {name}: value must be a non-empty list of words")
    if set(constraint) - {"type", "value"}:
        raise AtlasError(f"constraint {name}: unknown key {sorted(set(constraint) - {'type', 'value'})[0]!r}")


def met(text: str, constraints: list[dict]) -> list[bool]:
    """Whether `text` meets each constraint, in order."""
    return [bool(CONSTRAINTS.get(c["type"])(text, c.get("value"))) for c in constraints]
