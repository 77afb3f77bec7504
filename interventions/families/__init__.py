"""Task families: the Item record, the FAMILIES registry and seeded, disjoint train/eval splits.

A built-in family is a function `(rng: random.Random) -> Item` registered with
`@FAMILIES.register(name)`; `make_split` draws from it until it has `n_train + n_eval`
distinct items that fit the model's tokenizer (single-token target and distractor,
corrupt prompt of the same token length). A family value ending in `.jsonl` is a file
of items (see `jsonl.py`).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from interventions.registry import AtlasError, Registry


@dataclass(frozen=True)
class Item:
    prompt: str
    target: str  # one token for the model's tokenizer, usually with its leading space
    distractor: str  # one token, != target
    corrupt_prompt: str  # minimal edit of prompt whose answer is the distractor; same token length ("" = none)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Split:
    family: str
    seed: int
    train: tuple[Item, ...]
    eval: tuple[Item, ...]

    def digest(self) -> str:
        """Hash of the items themselves: changes with the generator, the file or the tokenizer's filtering."""
        rows = [[i.to_dict() for i in self.train], [i.to_dict() for i in self.eval]]
        return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


Generator = Callable[[random.Random], Item]
FAMILIES: Registry[Generator] = Registry("task family")

MAX_DRAWS_PER_ITEM = 50  # a generator gets this many tries per item it must deliver


def is_jsonl(value: str) -> bool:
    return str(value).endswith(".jsonl")


def family_name(value: str) -> str:
    """'antonyms' -> 'antonyms'; 'data/my_task.jsonl' -> 'my_task'."""
    return Path(value).stem if is_jsonl(value) else value


def token_ids(tokenizer, string: str, special: bool = True) -> list[int]:
    return tokenizer(string, add_special_tokens=special)["input_ids"]


def misfit(item: Item, tokenizer) -> str | None:
    """Why `item` cannot be used with this tokenizer, or None if it can."""
    for key in ("target", "distractor"):
        value = getattr(item, key)
        n = len(token_ids(tokenizer, value, special=False))
        if n != 1:
            spaced = " " + value.lstrip()
            hint = (f"; {spaced!r} (with a leading space, as it follows the prompt) is one token"
                    if spaced != value and len(token_ids(tokenizer, spaced, special=False)) == 1 else "")
            return f"{key} {value!r} is {n} tokens, not 1{hint}"
    if token_ids(tokenizer, item.target, False) == token_ids(tokenizer, item.distractor, False):
        return "target and distractor are the same token"
    if not item.corrupt_prompt:
        return None
    n_clean, n_corrupt = len(token_ids(tokenizer, item.prompt)), len(token_ids(tokenizer, item.corrupt_prompt))
    if n_clean != n_corrupt:
        return f"corrupt_prompt is {n_corrupt} tokens but prompt is {n_clean}"
    return None


def draw_items(name: str, seed: int, tokenizer, n: int) -> list[Item]:
    """`n` distinct usable items of built-in family `name`, the same for the same (name, seed, tokenizer)."""
    generate = FAMILIES.get(name)
    rng = random.Random(f"{name}:{seed}")  # str seeds hash with sha512: stable across processes
    items: dict[str, Item] = {}
    for _ in range(MAX_DRAWS_PER_ITEM * n):
        item = generate(rng)
        if item.prompt not in items and misfit(item, tokenizer) is None:
            items[item.prompt] = item
            if len(items) == n:
                return list(items.values())
    raise AtlasError(
        f"family {name!r}: only {len(items)} distinct items fit this tokenizer "
        f"(single-token target/distractor, length-matched corrupt prompt); need n_train + n_eval = {n}"
    )


def make_split(value: str, seed: int, tokenizer, n_train: int, n_eval: int, base_dir: Path) -> Split:
    """Train and eval items of one family value (built-in name or JSONL path) for one seed."""
    if is_jsonl(value):
        from interventions.families.jsonl import jsonl_split

        train, eval_ = jsonl_split(base_dir / value, seed, tokenizer, n_train, n_eval)
    else:
        items = draw_items(value, seed, tokenizer, n_train + n_eval)
        train, eval_ = items[:n_train], items[n_train:]
    return Split(family_name(value), seed, tuple(train), tuple(eval_))


from interventions.families import code, text  # noqa: E402,F401  (fill FAMILIES)
