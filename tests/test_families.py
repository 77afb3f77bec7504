"""Task families: every built-in (FAMILIES) fits the embedded tokenizer, splits are seeded and disjoint, JSONL
errors."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from interventions import models
from interventions.families import FAMILIES, Item, draw_items, make_split, misfit, token_ids
from interventions.registry import AtlasError

BUILTINS = FAMILIES.names()  # a family is one @FAMILIES.register entry: every test below covers each one


@pytest.fixture(scope="module")
def tok():
    return models.describe("smollm2-135m").tokenizer


def n_tokens(tok, text: str, special: bool = True) -> int:
    return len(token_ids(tok, text, special))


def test_the_builtin_families_are_registered():
    assert len(BUILTINS) >= 12 and all(callable(FAMILIES.get(name)) for name in BUILTINS)  # DESIGN §5: twelve


@pytest.mark.parametrize("name", BUILTINS)
def test_split_is_seeded_disjoint_and_fits_the_tokenizer(name, tok):
    split = make_split(name, 0, tok, n_train=16, n_eval=16, base_dir=Path("."))
    assert (split.family, split.seed, len(split.train), len(split.eval)) == (name, 0, 16, 16)
    assert make_split(name, 0, tok, 16, 16, Path(".")) == split  # same seed, same items
    other = make_split(name, 1, tok, 16, 16, Path("."))
    assert [i.prompt for i in other.train + other.eval] != [i.prompt for i in split.train + split.eval]
    train, eval_ = {i.prompt for i in split.train}, {i.prompt for i in split.eval}
    assert len(train) == 16 and len(eval_) == 16 and not train & eval_
    for item in split.train + split.eval:
        assert misfit(item, tok) is None, item
        assert n_tokens(tok, item.target, False) == 1 and n_tokens(tok, item.distractor, False) == 1, item
        assert item.target != item.distractor and item.prompt != item.corrupt_prompt, item
        assert n_tokens(tok, item.corrupt_prompt) == n_tokens(tok, item.prompt) <= 35, item


@pytest.mark.parametrize("name", BUILTINS)
def test_targets_are_the_natural_next_token(name, tok):
    """'prompt + target' tokenises as the prompt's ids then the target's id (no merge across the boundary),
    for the clean and the corrupt side: otherwise the model is asked for a token it never sees there."""
    for item in draw_items(name, 2, tok, 32):
        for prompt, answer in ((item.prompt, item.target), (item.corrupt_prompt, item.distractor)):
            assert token_ids(tok, prompt + answer) == token_ids(tok, prompt) + token_ids(tok, answer, False), item


@pytest.mark.parametrize("name", BUILTINS)
def test_each_family_delivers_128_distinct_items_per_seed(name, tok):
    drawn = [draw_items(name, seed, tok, 128) for seed in (0, 1, 2)]
    assert all(len({i.prompt for i in items}) == 128 for items in drawn)
    assert drawn[0] != drawn[1] != drawn[2]


def test_generators_are_pure_functions_of_the_rng():
    for name in BUILTINS:
        generate = FAMILIES.get(name)
        assert [generate(random.Random(7)) for _ in range(3)] == [generate(random.Random(7))] * 3


def test_a_family_short_of_items_raises(tok, monkeypatch):
    fixed = Item("The capital of France is", " Paris", " Rome", "The capital of Italy is")
    monkeypatch.setitem(FAMILIES._entries, "test-one-item", lambda rng: fixed)
    monkeypatch.setitem(FAMILIES._entries, "test-misfit", lambda rng: Item("a b", " Paris Rome", " x", "a c"))
    assert draw_items("test-one-item", 0, tok, 1) == [fixed]
    with pytest.raises(AtlasError, match="only 1 distinct items"):
        make_split("test-one-item", 0, tok, n_train=1, n_eval=1, base_dir=Path("."))
    with pytest.raises(AtlasError, match="only 0 distinct items"):
        draw_items("test-misfit", 0, tok, 1)
    with pytest.raises(AtlasError, match="did you mean 'antonyms'"):
        make_split("antonym", 0, tok, 1, 1, Path("."))


# --- JSONL families ----------------------------------------------------------------------------
def rows(tok, n: int, seed: int = 0) -> list[dict]:
    return [item.to_dict() for item in draw_items("factual_recall", seed, tok, n)]


def write(path: Path, lines) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_without_split_gives_a_seeded_split(tok, tmp_path):
    data = rows(tok, 10)
    write(tmp_path / "my_task.jsonl", data[:5] + [""] + data[5:])  # a blank line is skipped
    split = make_split("my_task.jsonl", 0, tok, n_train=4, n_eval=5, base_dir=tmp_path)
    assert split.family == "my_task" and (len(split.train), len(split.eval)) == (4, 5)
    assert make_split("my_task.jsonl", 0, tok, 4, 5, tmp_path) == split
    assert make_split("my_task.jsonl", 1, tok, 4, 5, tmp_path) != split
    given = {r["prompt"] for r in data}
    train, eval_ = {i.prompt for i in split.train}, {i.prompt for i in split.eval}
    assert train | eval_ <= given and not train & eval_ and len(train | eval_) == 9


def test_jsonl_split_field_is_used_as_given(tok, tmp_path):
    data = rows(tok, 6)
    for i, row in enumerate(data):
        row["split"] = "train" if i in (1, 4) else "eval"
    write(tmp_path / "given.jsonl", data)
    for seed in (0, 1):
        split = make_split("given.jsonl", seed, tok, n_train=2, n_eval=3, base_dir=tmp_path)
        assert [i.prompt for i in split.train] == [data[1]["prompt"], data[4]["prompt"]]
        assert [i.prompt for i in split.eval] == [data[0]["prompt"], data[2]["prompt"], data[3]["prompt"]]


@pytest.mark.parametrize("bad_line, message", [
    ('{"prompt": "a", "target": ', "bad.jsonl:3: malformed JSON"),
    ('["a", "b"]', "bad.jsonl:3: a line must be a JSON object"),
    ({"prompt": "a", "target": " b", "corrupt_prompt": "d"}, "bad.jsonl:3: missing key 'distractor'"),
    ({"prompt": "a", "target": " b", "distractor": " c", "corrupt_prompt": "d", "why": 1},
     "bad.jsonl:3: unknown key 'why'"),
    ({"prompt": "a", "target": "", "distractor": " c", "corrupt_prompt": "d"}, "bad.jsonl:3: 'target'"),
    ({"prompt": "a", "target": " b", "distractor": " c", "corrupt_prompt": "d", "split": "test"},
     "bad.jsonl:3: 'split' must be"),
])
def test_jsonl_defects_name_file_and_line(tok, tmp_path, bad_line, message):
    write(tmp_path / "bad.jsonl", rows(tok, 2) + [bad_line] + rows(tok, 3, seed=1)[2:])
    with pytest.raises(AtlasError) as err:
        make_split("bad.jsonl", 0, tok, 1, 1, tmp_path)
    assert message in str(err.value)


def test_jsonl_item_that_does_not_fit_the_tokenizer_names_its_line(tok, tmp_path):
    data = rows(tok, 4)
    data[1]["target"] = " Paris Rome"  # two tokens
    write(tmp_path / "multi.jsonl", data)
    with pytest.raises(AtlasError, match=r"multi\.jsonl:2: target ' Paris Rome' is 2 tokens"):
        make_split("multi.jsonl", 0, tok, 1, 1, tmp_path)
    data[1]["target"] = "Berlin"  # no leading space: two tokens, while " Berlin" is one
    write(tmp_path / "multi.jsonl", data)
    with pytest.raises(AtlasError, match=r"multi\.jsonl:2: target 'Berlin' is 2 tokens, not 1; ' Berlin' \(with a "
                       r"leading space, as it follows the prompt\) is one token$"):
        make_split("multi.jsonl", 0, tok, 1, 1, tmp_path)
    data[1] = dict(rows(tok, 5)[4], corrupt_prompt="The capital of the United Kingdom is")
    write(tmp_path / "multi.jsonl", data)
    with pytest.raises(AtlasError, match=r"multi\.jsonl:2: corrupt_prompt is \d+ tokens but prompt is"):
        make_split("multi.jsonl", 0, tok, 1, 1, tmp_path)


def test_jsonl_repeated_prompt_is_refused(tok, tmp_path):
    data = rows(tok, 4)
    write(tmp_path / "dup.jsonl", data + [data[1]])  # the same prompt could land in train and eval
    with pytest.raises(AtlasError, match=r"dup\.jsonl:5: duplicate prompt \(first on line 2\)"):
        make_split("dup.jsonl", 0, tok, 2, 2, tmp_path)


def test_jsonl_split_on_some_lines_only_is_refused(tok, tmp_path):
    data = rows(tok, 4)
    data[0]["split"], data[2]["split"] = "train", "eval"
    write(tmp_path / "mixed.jsonl", data)
    with pytest.raises(AtlasError, match="either every line carries 'split' or none does"):
        make_split("mixed.jsonl", 0, tok, 1, 1, tmp_path)


def test_jsonl_with_too_few_items_or_none_or_no_file(tok, tmp_path):
    write(tmp_path / "few.jsonl", rows(tok, 5))
    with pytest.raises(AtlasError, match=r"few\.jsonl: needs n_train \+ n_eval = 6 items, has 5$"):
        make_split("few.jsonl", 0, tok, n_train=4, n_eval=2, base_dir=tmp_path)
    data = rows(tok, 3)
    for row, split in zip(data, ("train", "train", "train")):
        row["split"] = split
    write(tmp_path / "no_eval.jsonl", data)
    with pytest.raises(AtlasError, match='needs n_eval = 1 items with "split": "eval", has 0'):
        make_split("no_eval.jsonl", 0, tok, n_train=1, n_eval=1, base_dir=tmp_path)
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(AtlasError, match="holds no items"):
        make_split("empty.jsonl", 0, tok, 1, 1, tmp_path)
    with pytest.raises(AtlasError, match="no such JSONL file"):
        make_split("absent.jsonl", 0, tok, 1, 1, tmp_path)
