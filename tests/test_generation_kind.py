"""The generation kind: constraint checkers on hand-made text, the loop flag and repetition on constructed sequences,
decoding against a plain loop (no KV cache), padding, seeded sampling, spec validation and one end-to-end sweep."""
from __future__ import annotations

import json

import pytest
import torch

from interventions.constraints import CONSTRAINTS, code_block, met
from interventions.context import FamilyRun, TrialContext, seeded_generator
from interventions.decoding import chat_rows, decode, prompt_batch
from interventions.generation import looping, repetition, until_eos
from interventions.generation_check import builtin_prompts, output_metrics, prompt_split
from interventions.kinds import run_kind
from interventions.models import load
from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import REPO, bad_input, children, run_main, sweep_runs

CODE = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
# (type, value, text that meets it, text that does not)
CASES = [
    ("min_words", 3, "one two three", "one two"),
    ("max_words", 3, "one two three", "one two three four"),
    ("min_lines", 2, "a\n\nb", "a\n\n  \n"),
    ("max_lines", 2, "a\nb\n\n", "a\nb\nc"),
    ("include", ["Paris", "France"], "paris is in France.", "Paris is nice."),
    ("exclude", ["the"], "Rain falls; theory holds.", "The rain falls."),
    ("json", "object", '```json\n{"name": "Ana", "age": 30}\n```', '{"name": "Ana", age: 30}'),
    ("json", "array", "[1, 2, 3]", '{"a": 1}'),
    ("python_function", "add", CODE, "```python\ndef plus(a, b):\n    return a + b\n```"),
    ("python_function", "add", "def add(a, b):\n    return a + b", "def add(a, b)\n    return a + b"),
]


@pytest.mark.parametrize("name, value, good, bad", CASES)
def test_each_constraint_checker_passes_and_fails_on_hand_made_text(name, value, good, bad):
    check = CONSTRAINTS.get(name)
    assert check(good, value) is True and check(bad, value) is False


def test_every_constraint_type_has_a_case_and_every_shipped_prompt_uses_registered_ones():
    assert {c[0] for c in CASES} == set(CONSTRAINTS.names())
    prompts = builtin_prompts()
    assert len(prompts) >= 30 and len({p.id for p in prompts}) == len(prompts)
    kinds = {c["type"] for p in prompts for c in json.loads(p.constraints)}
    assert kinds == set(CONSTRAINTS.names())  # every type is exercised by the shipped set


def test_code_block_reads_the_first_fence_or_the_whole_text():
    assert code_block(CODE) == "def add(a, b):\n    return a + b"
    assert code_block("```\nx = 1") == "x = 1" and code_block("  x = 1 ") == "x = 1"
    assert met(CODE, [{"type": "python_function", "value": "add"}, {"type": "max_words", "value": 3}]) == [True, False]


def test_loop_flag_and_repetition_on_constructed_sequences():
    normal = list(range(40))
    loop = list(range(10)) + [7, 8, 9, 5] * 6  # a 4-token block six times at the end
    one = [3] * 20  # one token over and over
    assert not looping(normal) and looping(loop) and looping(one)
    assert not looping([1, 2] * 7)  # 14 tokens: shorter than the 16-token span
    assert not looping([1, 2] * 10 + [9])  # the loop must reach the end
    assert not looping(list(range(20)) * 2)  # a period of 20 > 16
    assert repetition(normal) == 0.0 and repetition(one) == pytest.approx(16 / 17)
    assert repetition([1, 2, 3]) != repetition([1, 2, 3])  # nan: no 4-gram at all
    assert output_metrics(loop, "one two", [{"type": "max_words", "value": 1}])["loop"] == 1.0


def plain_greedy(model, ids: list[int], tokens: int) -> list[int]:
    """Independent of the kind: argmax of model(ids).logits[:, -1], appended step by step, no cache, one prompt."""
    seq = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(tokens):
            nxt = int(model.module(input_ids=seq, use_cache=False).logits[0, -1].argmax())
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
    return out


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gemma3_text", "tiny-llama"])  # absolute positions; RoPE
def test_greedy_decoding_equals_a_plain_loop_and_padding_changes_nothing(name):
    model = load(name)
    prompts = [p.prompt for p in builtin_prompts()[:3]]  # different lengths: rows 1 and 2 are left-padded
    rows = chat_rows(model.tokenizer, prompts)
    assert len({len(r) for r in rows}) > 1
    batched = decode(model, prompt_batch(model, prompts), 16).ids.tolist()
    for i, prompt in enumerate(prompts):
        alone = decode(model, prompt_batch(model, [prompt]), 16).ids[0].tolist()
        assert batched[i] == alone == plain_greedy(model, rows[i], 16)


def test_the_chat_template_is_applied_when_the_tokenizer_has_one(tiny_llama):
    tok = tiny_llama.tokenizer
    (row,) = chat_rows(tok, ["Hi"])
    want = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert tok.chat_template and tok.decode(row) == want


def test_sampling_with_the_same_seed_is_identical_and_another_seed_differs(tiny_llama):
    batch = prompt_batch(tiny_llama, [p.prompt for p in builtin_prompts()[:4]])

    def draw(seed):
        return decode(tiny_llama, batch, 16, "sampled", 1.0, seeded_generator(seed)).ids

    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_decode_stops_at_eos_and_counts_only_decode_steps(tiny_llama):
    batch = prompt_batch(tiny_llama, ["a", "b c"])
    out = decode(tiny_llama, batch, 8)
    assert out.ids.shape == (2, 8) and out.decode_tokens == 2 * 7 and out.decode_s > 0
    eos = tiny_llama.tokenizer.eos_token_id
    assert until_eos(torch.tensor([[5, eos, 6]]), [eos]) == [[5]]


def test_a_trial_reports_per_output_values_and_its_continuations(tmp_path, tiny_llama):
    split = prompt_split("generation_prompts", 0, tiny_llama.tokenizer, 2, 3, REPO)
    ctx = TrialContext(tiny_llama, 0, FamilyRun(tiny_llama, split),
                       options={"decode": {"max_new_tokens": 6, "temperature": 0.7}})
    result = run_kind("generation", ctx, {"decoding": "greedy"})
    assert set(result.items) == {"repetition", "loop", "adherence", "new_tokens"}
    assert all(len(v) == 3 for v in result.items.values()) and result.metrics["new_tokens"] <= 6
    lines = result.artifacts["continuations.jsonl"].decode().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [p.id for p in builtin_prompts()[:3]]
    assert 0 <= result.metrics["adherence"] <= 1 and result.metrics["decode_tokens_per_s"] > 0


GEN = """name: gen
model: tiny-llama
kind: generation
n_eval: 3
decode: {max_new_tokens: 8, temperature: 0.7}
axes:
  seed: [0, 1]
  decoding: [greedy, sampled]
"""


def test_a_generation_spec_validates_and_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "gen.yaml").write_text(GEN)
    sweep = load_sweep(tmp_path / "gen.yaml")
    assert sweep.axes["family"] == ["generation_prompts"] and sweep.options["decode"]["max_new_tokens"] == 8
    cases = [(GEN.replace("[greedy, sampled]", "[greedy, beam]"), "axes.decoding.1: unknown decoding 'beam'"),
             (GEN.replace("temperature: 0.7", "temperature: 0"), "decode.temperature: 0.0 must be > 0 for sampled"),
             (GEN.replace("n_eval: 3", "n_eval: 99"), "axes.family: generation_prompts: needs n_eval = 99 prompts"),
             (GEN.replace("max_new_tokens: 8", "max_new_token: 8"), "decode.max_new_token: unknown key")]
    for text, start in cases:
        assert bad_input(tmp_path, monkeypatch, capsys, text).startswith(f"error: spec.yaml: {start}")
    greedy_only = GEN.replace("[greedy, sampled]", "[greedy]").replace("temperature: 0.7", "temperature: 0")
    (tmp_path / "g.yaml").write_text(greedy_only)
    load_sweep(tmp_path / "g.yaml")  # temperature is read by sampled decoding only
    models = GEN.replace("model: tiny-llama\n", "").replace("axes:\n", "axes:\n  model: [tiny-llama, tiny-gpt2]\n")
    (tmp_path / "m.yaml").write_text(models)
    sweep = load_sweep(tmp_path / "m.yaml")
    assert [p.name for p in sweep.parts] == ["tiny-llama", "tiny-gpt2"] and len(expand(sweep)) == 2 * 2 * 2


def test_a_prompt_file_of_ones_own_is_a_family_value(tmp_path, monkeypatch, capsys):
    line = {"id": "x", "prompt": "Say hi.", "constraints": [{"type": "max_words", "value": 3}]}
    (tmp_path / "mine.jsonl").write_text(json.dumps(line) + "\n")
    (tmp_path / "gen.yaml").write_text(GEN.replace("n_eval: 3", "n_eval: 1") + "  family: [mine.jsonl]\n")
    assert load_sweep(tmp_path / "gen.yaml").axes["family"] == ["mine"]
    bad = dict(line, constraints=[{"type": "max_word", "value": 3}])
    err = bad_input(tmp_path, monkeypatch, capsys, GEN.replace("n_eval: 3", "n_eval: 1") + "  family: [mine.jsonl]\n",
                    files={"mine.jsonl": json.dumps(bad) + "\n"})
    assert err.startswith("error: spec.yaml: axes.family: mine.jsonl line 1: unknown constraint type 'max_word'")


@pytest.mark.slow
def test_a_generation_sweep_runs_end_to_end_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "gen.yaml").write_text(GEN)
    code, out, err = run_main(monkeypatch, capsys, "sweep", "gen.yaml")
    assert code == 0, err
    runs = children(sweep_runs(tmp_path, "gen"))
    assert len(runs) == 4 and all("adherence" in r.data.metrics and "loop_share" in r.data.metrics for r in runs)
    greedy = [r.data.metrics for r in runs if r.data.params["decoding"] == "greedy"]
    assert greedy[0]["repetition"] == greedy[1]["repetition"]  # greedy: the seed changes nothing
    assert "loop_share" in out
    from orchestrator.report import write_report

    made = write_report(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "gen", tmp_path / "report")
    assert [f.id for f in made.figures] == ["generation_decoding"] and made.html.is_file()
