"""Built-in code task families: JSON keys, bracket closing, Python values and Python syntax."""
from __future__ import annotations

import random

from interventions.families import FAMILIES, Item

# --- json_schema -----------------------------------------------------------------------------
KEYS = (
    "id", "name", "age", "city", "email", "price", "color", "size", "title", "year", "type", "status", "count",
    "score", "date", "user", "level", "code", "country", "phone", "rating", "weight", "height", "model",
)


def _obj(keys, rng: random.Random) -> str:
    return ", ".join(f'"{k}": {rng.randint(1, 9)}' for k in keys)


@FAMILIES.register("json_schema")
def json_schema(rng: random.Random) -> Item:
    """'Schema: id, name, city\\n{"id": 7, "name": 3, "' -> 'city' (the next key the schema lists);
    corrupt swaps that key in the schema line for another key."""
    keys = rng.sample(KEYS, rng.randint(3, 4) + 1)
    keys, other = keys[:-1], keys[-1]
    i = rng.randint(1, len(keys) - 1)
    bad = keys[:i] + [other] + keys[i + 1:]
    body = "{" + _obj(keys[:i], rng) + ', "'
    return Item(f"Schema: {', '.join(keys)}\n{body}", keys[i], other, f"Schema: {', '.join(bad)}\n{body}")


# --- delimiter_tracking ----------------------------------------------------------------------
CLOSE = {"(": ")", "[": "]"}
FUNCS = ("len", "str", "int", "abs", "print", "float", "type", "repr", "bool", "hash", "id", "ord")
ARRAYS = ("items", "values", "names", "words", "lines", "args", "data", "nums", "scores", "parts", "keys")
INDICES = ("i", "j", "0", "1", "k", "n", "-1", "2", "idx", "key")
SCALARS = ("n", "i", "name", "text", "value", "count", "total", "word", "line", "size")
TARGETS = ("y", "x", "result", "out", "z", "total", "val", "res")


def _nest(rng: random.Random, ops: list[str]) -> str:
    """'len(data[i' for ops ['(', '[']: one-argument calls and single subscripts, innermost argument last."""
    text = "".join((rng.choice(FUNCS) if op == "(" else rng.choice(ARRAYS)) + op for op in ops)
    return text + rng.choice(SCALARS if ops[-1] == "(" else INDICES)


@FAMILIES.register("delimiter_tracking")
def delimiter_tracking(rng: random.Random) -> Item:
    """'y = len(data[i' -> '])': one-argument calls and single subscripts, nested 1-2 deep, so every open
    bracket closes next; corrupt flips the innermost bracket ('len(data(i' -> '))')."""
    ops = rng.choice((["("], ["["], ["(", "("], ["(", "["], ["[", "["]))  # not 'a[f(x': ')' may go on ' - 1]'
    text = _nest(rng, ops)
    flipped = "[" if ops[-1] == "(" else "("
    cut = text.rindex(ops[-1])
    bad_ops = ops[:-1] + [flipped]
    lhs = f"{rng.choice(TARGETS)} = "
    close = lambda o: "".join(CLOSE[x] for x in reversed(o))  # noqa: E731
    return Item(lhs + text, close(ops), close(bad_ops), lhs + text[:cut] + flipped + text[cut + 1:])


# --- code_semantics --------------------------------------------------------------------------
VARS = tuple("abcdenmpqrstuvwxyz")


def _lookup(rng: random.Random):
    """'a = 3\\nb = 7\\nc = 1\\nprint(b)' prints 7; corrupt prints another variable."""
    names, values = rng.sample(VARS, 3), rng.sample(range(1, 10), 3)
    q, q2 = rng.sample(range(3), 2)
    head = "".join(f"{v} = {n}\n" for v, n in zip(names, values))
    return head + f"print({names[q]})", values[q], head + f"print({names[q2]})", values[q2]


def _reassign(rng: random.Random):
    """'x = 3\\nx = 5\\nprint(x)' prints 5; corrupt changes the second value."""
    v = rng.choice(VARS)
    a, b, b2 = rng.sample(range(1, 10), 3)
    text = lambda b: f"{v} = {a}\n{v} = {b}\nprint({v})"  # noqa: E731
    return text(b), b, text(b2), b2


def _add(rng: random.Random):
    """'x = 3\\nprint(x + 2)' prints 5; corrupt changes the added constant."""
    v = rng.choice(VARS)
    a = rng.randint(1, 7)
    b, b2 = rng.sample(range(1, 10 - a), 2)
    text = lambda b: f"{v} = {a}\nprint({v} + {b})"  # noqa: E731
    return text(b), a + b, text(b2), a + b2


def _index(rng: random.Random):
    """'a = [4, 8, 2]\\nprint(a[1])' prints 8; corrupt changes the index."""
    v = rng.choice(VARS)
    values = rng.sample(range(1, 10), 3)
    i, i2 = rng.sample(range(3), 2)
    text = lambda i: f"{v} = [{', '.join(map(str, values))}]\nprint({v}[{i}])"  # noqa: E731
    return text(i), values[i], text(i2), values[i2]


@FAMILIES.register("code_semantics")
def code_semantics(rng: random.Random) -> Item:
    """What a tiny Python snippet prints, one digit after "  # Output: ": variable lookup, reassignment,
    addition, list indexing."""
    clean, answer, corrupt, other = rng.choice((_lookup, _reassign, _add, _index))(rng)
    return Item(f"{clean}  # Output: ", str(answer), str(other), f"{corrupt}  # Output: ")


# --- code_syntax -----------------------------------------------------------------------------
BLOCK, SIMPLE = ("if", "while", "elif"), ("return", "yield")
NAMES = ("x", "n", "i", "count", "total", "size", "key", "value", "left", "right", "depth", "score")
COLLECTIONS = ("items", "data", "seen", "keys", "values", "names", "rows", "words", "nodes", "lines")
COMPARE = (">", "<", "==", "!=", ">=", "<=")
ALIASED = ("numpy", "pandas", "seaborn", "tensorflow")  # 'import numpy' -> ' as'
PLAIN = ("os", "sys", "json", "re", "math", "time", "random", "csv", "glob", "shutil")  # 'import os' -> '\n'


def _condition(rng: random.Random) -> str:
    a, b = rng.sample(NAMES, 2)
    return rng.choice((
        f"{a} {rng.choice(COMPARE)} {rng.randint(0, 9)}", f"{a} {rng.choice(COMPARE)} {b}",
        f"{a} in {rng.choice(COLLECTIONS)}", f"{a} is None",
    ))


@FAMILIES.register("code_syntax")
def code_syntax(rng: random.Random) -> Item:
    """The next syntactic token of a Python line after a '# Python' context line: 'if x > 0' -> ':' vs
    'return x > 0' -> '\\n' (corrupt swaps the keyword; 'for x in items' -> ':' too), or 'import numpy'
    -> ' as' vs 'import os' -> '\\n' (corrupt swaps the module)."""
    head = f"# Python\n{rng.choice(NAMES)} = {rng.randint(0, 9)}\n"
    if rng.random() < 0.25:
        pair = ((f"import {rng.choice(ALIASED)}", " as"), (f"import {rng.choice(PLAIN)}", "\n"))
    else:
        cond = _condition(rng)
        block = rng.choice(BLOCK + ("for",)) if " in " in cond else rng.choice(BLOCK)
        pair = ((f"{block} {cond}", ":"), (f"{rng.choice(SIMPLE)} {cond}", "\n"))
    (line, answer), (line2, other) = pair if rng.random() < 0.5 else pair[::-1]
    return Item(head + line, answer, other, head + line2)
