"""Custom task families from a JSONL file: one item per line, errors name file:line and key."""
from __future__ import annotations

import json
import random
from pathlib import Path

from interventions.families import Item, misfit
from interventions.registry import AtlasError

KEYS = ("prompt", "target", "distractor")
OPTIONAL = ("corrupt_prompt", "split")  # without corrupt_prompt, the patching methods refuse the family
SPLITS = ("train", "eval")


def read_jsonl(path: Path) -> list[tuple[int, Item, str | None]]:
    """(line number, item, split or None) per line; blank lines are skipped; any defect is an AtlasError."""
    if not path.is_file():
        raise AtlasError(f"{path}: no such JSONL file")
    rows, first_line = [], {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AtlasError(f"{where}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise AtlasError(f"{where}: a line must be a JSON object")
        missing = [k for k in KEYS if k not in row]
        extra = sorted(set(row) - set(KEYS) - set(OPTIONAL))
        if missing or extra:
            what = f"missing key {missing[0]!r}" if missing else f"unknown key {extra[0]!r}"
            raise AtlasError(f"{where}: {what} (keys: {', '.join(KEYS)}, optional {', '.join(OPTIONAL)})")
        bad = [k for k in (*KEYS, "corrupt_prompt") if k in row and (not isinstance(row[k], str) or not row[k])]
        if bad:
            raise AtlasError(f"{where}: {bad[0]!r} must be a non-empty string")
        split = row.get("split")
        if split is not None and split not in SPLITS:
            raise AtlasError(f"{where}: 'split' must be 'train' or 'eval', not {split!r}")
        if row["prompt"] in first_line:  # a repeated prompt could land in train and eval both
            raise AtlasError(f"{where}: duplicate prompt (first on line {first_line[row['prompt']]})")
        first_line[row["prompt"]] = lineno
        rows.append((lineno, Item(*(row[k] for k in KEYS), row.get("corrupt_prompt", "")), split))
    if not rows:
        raise AtlasError(f"{path}: the file holds no items")
    return rows


def jsonl_split(path: Path, seed: int, tokenizer, n_train: int, n_eval: int) -> tuple[list[Item], list[Item]]:
    """Items as given by `split` when lines carry it, else a seeded shuffle cut into train/eval."""
    rows = read_jsonl(path)
    for lineno, item, _ in rows:
        reason = misfit(item, tokenizer)
        if reason:
            raise AtlasError(f"{path.name}:{lineno}: {reason}")
    given = {split for _, _, split in rows}
    if given != {None}:
        if None in given:
            raise AtlasError(f"{path.name}: either every line carries 'split' or none does")
        train = [item for _, item, split in rows if split == "train"]
        eval_ = [item for _, item, split in rows if split == "eval"]
    else:
        items = [item for _, item, _ in rows]
        random.Random(f"{path.stem}:{seed}").shuffle(items)
        train, eval_ = items[:n_train], items[n_train:]
    if given == {None} and len(items) < n_train + n_eval:
        raise AtlasError(f"{path.name}: needs n_train + n_eval = {n_train + n_eval} items, has {len(items)}")
    for name, have, need in (("train", train, n_train), ("eval", eval_, n_eval)):
        if len(have) < need:
            raise AtlasError(f"{path.name}: needs n_{name} = {need} items with \"split\": \"{name}\", "
                             f"has {len(have)}")
    return train[:n_train], eval_[:n_eval]
