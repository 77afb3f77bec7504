"""The `length` axis (issue 25 item 1): seeded context prepended to items (interventions/length.py), its buckets, the
padding rule at ~1000 tokens, validation, and trial_ids with and without the axis."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from interventions.context import FamilyRun
from interventions.families import Split, token_ids
from interventions.length import BUCKETS, SEPARATOR, lengthen, lengthen_split, neutral_sentences
from orchestrator.grid import expand
from orchestrator.report.hubs import hubs_across_lengths
from orchestrator.report.sections import SECTIONS
from orchestrator.spec import load_sweep
from tests.conftest import bad_input, children, spec, split, sweep_runs, swept

STEER = dict(layer=[0], strength=[0.5], vector_type=["mean_diff"])
OLD_SPEC = dict(layer=[0, 2], strength=[0.5], vector_type=["mean_diff"], family=["antonyms", "copying"], seed=[0, 1])
# trial_ids and spec_hash of OLD_SPEC (named "old") computed by the tree before the length axis (main at 7241789)
OLD_IDS = ['77daabd2c3acf4c5', '7ba7f304e1d21a72', 'd4334c42d85d90b4', '944465d3be510f14', '2846ff2ed7721fd4',
           '3718494e71a6fe1e', '92b8b9ad803f8fc7', '90988c97010225ae', 'b855168a6fa56f92', '9e50b3d84892eaad',
           '6e3c01b335a78644', '6170963755c9aaf4']
OLD_HASH = "b7420fa2e2cdaf82"


def test_zero_added_tokens_keep_the_last_position_logits(tiny_llama):
    base = split(tiny_llama, "copying", n_train=4, n_eval=6)
    tok = tiny_llama.tokenizer
    import random
    for item in base.eval:  # a bucket of exactly the prompt's own length: nothing to add
        n = len(token_ids(tok, item.prompt))
        same, got = lengthen(item, tok, n, n, random.Random(0))
        assert same == item and got == n
    lengths = sorted({len(token_ids(tok, i.prompt)) for i in base.eval})
    longest = lengths[-1]
    lengthened, sizes = lengthen_split(base, tok, f"{longest}-{longest}")
    kept = [k for k, i in enumerate(base.eval) if len(token_ids(tok, i.prompt)) == longest]
    assert [lengthened.eval[k] for k in kept] == [base.eval[k] for k in kept]
    before = FamilyRun(tiny_llama, base).clean_logits
    after = FamilyRun(tiny_llama, lengthened).clean_logits
    torch.testing.assert_close(after[kept], before[kept], atol=1e-5, rtol=0)  # batch mates padded longer or not
    if len(lengths) > 1:  # the shorter items did get context, and that moves their logits
        moved = [k for k in range(len(base.eval)) if k not in kept]
        assert all(sizes["eval"][k] == longest for k in range(len(base.eval)))
        assert not torch.allclose(after[moved], before[moved], atol=1e-3)


def test_realised_lengths_lie_in_the_bucket_and_the_item_stays_last(tiny_llama):
    tok = tiny_llama.tokenizer
    for family in ("copying", "factual_recall", "json_schema"):
        base = split(tiny_llama, family, n_train=4, n_eval=4)
        for label, (lo, hi) in BUCKETS.items():
            for source in ("neutral", "family"):
                longer, sizes = lengthen_split(base, tok, label, source)
                assert longer.family == f"{family}@{label}"
                for old, new, n in zip(base.eval, longer.eval, sizes["eval"]):
                    ids = token_ids(tok, new.prompt)
                    own = token_ids(tok, old.prompt, special=False)
                    assert lo <= len(ids) == n <= hi, (family, label, source, n)
                    assert ids[-len(own):] == own and new.prompt.endswith(old.prompt)
                    assert (new.target, new.distractor) == (old.target, old.distractor)
                    added = new.prompt[:-len(old.prompt)]
                    if added:
                        assert added.endswith(SEPARATOR)
                        if source == "neutral":  # every word of the context comes from the shipped passages
                            text = " ".join(neutral_sentences())
                            assert all(w in text for w in added.split())
                        else:  # other solved items of the family, never the item itself
                            assert old.prompt + old.target not in added
                            last = added[:-len(SEPARATOR)].split("\n")[-1]  # the unit next to the item
                            assert any((o.prompt + o.target).endswith(last) for o in base.train
                                       if o.prompt != old.prompt)
                    if old.corrupt_prompt:
                        assert len(token_ids(tok, new.corrupt_prompt)) == len(ids)
                        assert new.corrupt_prompt == added + old.corrupt_prompt


def test_the_context_is_the_same_on_reruns_and_differs_with_the_seed(tiny_llama):
    tok = tiny_llama.tokenizer
    base = split(tiny_llama, "antonyms", n_train=4, n_eval=6)
    first, _ = lengthen_split(base, tok, "medium")
    again, _ = lengthen_split(split(tiny_llama, "antonyms", n_train=4, n_eval=6), tok, "medium")
    assert first == again and first.digest() == again.digest()
    reseeded = Split(base.family, base.seed + 1, base.train, base.eval)  # the same items under another seed
    other, _ = lengthen_split(reseeded, tok, "medium")
    assert [i.prompt for i in other.eval] != [i.prompt for i in first.eval]


@torch.no_grad()
def test_padding_rule_holds_at_a_thousand_tokens(tiny_llama):
    """Left-padded batches of ~1000-token prompts give each prompt's last-position logits as alone (DESIGN 4)."""
    tok = tiny_llama.tokenizer
    base = split(tiny_llama, "copying", n_train=3, n_eval=4)
    longer, sizes = lengthen_split(base, tok, "880-1000")
    assert all(880 <= n <= 1000 for n in sizes["eval"]) and len(set(sizes["eval"])) > 1  # padding happens
    batched = FamilyRun(tiny_llama, longer).clean_logits
    for k, item in enumerate(longer.eval):
        alone = FamilyRun(tiny_llama, Split(longer.family, longer.seed, longer.train, (item,))).clean_logits
        torch.testing.assert_close(batched[k], alone[0], atol=1e-4, rtol=0)


def _sweep(tmp_path, text: str):
    (tmp_path / "spec.yaml").write_text(text)
    return load_sweep(tmp_path / "spec.yaml")


def test_a_spec_without_length_keeps_its_trial_ids(tmp_path):
    sweep = _sweep(tmp_path, spec("steering", "old", **OLD_SPEC))
    assert [p.trial_id for p in expand(sweep)] == OLD_IDS
    assert sweep.spec_hash == OLD_HASH
    assert all("length" not in p.values for p in expand(sweep))


def test_length_reaches_points_and_trial_ids(tmp_path):
    sweep = _sweep(tmp_path, spec("steering", "old", **OLD_SPEC, length=["short", {"min": 40, "max": 60}]))
    points = expand(sweep)
    assert len(points) == 2 * len(OLD_IDS)
    assert {p.values["length"] for p in points} == {"short", "40-60"}
    assert len({p.trial_id for p in points}) == len(points) and not {p.trial_id for p in points} & set(OLD_IDS)
    assert {f for f, _ in sweep.parts[0].splits} == {"antonyms@short", "antonyms@40-60", "copying@short",
                                                     "copying@40-60"}
    assert sweep.axes["family"] == ["antonyms", "copying"] and sweep.axes["length"] == ["short", "40-60"]
    again = expand(_sweep(tmp_path, spec("steering", "old", **OLD_SPEC, length=["short", {"min": 40, "max": 60}])))
    assert [p.trial_id for p in again] == [p.trial_id for p in points]  # seeded context: resumable
    fam = expand(_sweep(tmp_path, spec("steering", "old", **OLD_SPEC, length=["short", {"min": 40, "max": 60}],
                                       extra={"length_context": "family"})))
    assert not {p.trial_id for p in fam} & {p.trial_id for p in points}  # another context, other items


def test_unreachable_buckets_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    line = bad_input(tmp_path, monkeypatch, capsys, spec(**STEER, length=[{"min": 600, "max": 700}]))
    assert "axes.length: bucket '600-700' needs at least 600 tokens, more than the model's context of 512" in line
    line = bad_input(tmp_path, monkeypatch, capsys, spec(**STEER, length=[{"min": 1, "max": 2}]))
    assert "axes.length: an item's prompt is" in line and "longer than the bucket's max 2" in line
    line = bad_input(tmp_path, monkeypatch, capsys, spec(**STEER, length=["huge"]))
    assert "axes.length.0" in line and "unknown bucket 'huge'" in line
    line = bad_input(tmp_path, monkeypatch, capsys, spec(**STEER, extra={"length_context": "family"}))
    assert "length_context: only with a length axis" in line


@pytest.mark.slow
def test_a_length_sweep_logs_its_bucket_and_realised_length(tmp_path):
    """End to end (Ray, MLflow): `length` is a param of every child run and `prompt_tokens` its eval items' mean."""
    text = spec("steering", "lengths", **STEER, family=["copying"], length=["short", "medium"],
                extra={"resources": {"cpu": 2, "gpu": 0}})
    swept(tmp_path, "lengths", text)
    sweep = _sweep(tmp_path, text)
    runs = children(sweep_runs(tmp_path, "lengths"))
    points = {p.trial_id: p for p in expand(sweep)}
    assert len(runs) == len(points) and {r.data.params["length"] for r in runs} == {"short", "medium"}
    tok = sweep.parts[0].model.tokenizer
    for run in runs:
        point = points[run.data.tags["orchestrator.trial_id"]]
        items = sweep.parts[0].splits[(f"copying@{point.values['length']}", 0)].eval
        want = sum(len(token_ids(tok, i.prompt)) for i in items) / len(items)
        assert run.data.metrics["prompt_tokens"] == pytest.approx(want)


def _hub_rows(hubs: dict[tuple[str, str], int], seeds=(0, 1, 2), layers=range(4)) -> pd.DataFrame:
    """Ablation rows whose KL peaks at the given layer per (family, length), for every seed."""
    return pd.DataFrame([{"family": f, "length": b, "seed": s, "layer": layer, "component": "layer",
                          "method": "mean", "kl": 1.0 + (layer == hub) + 0.01 * s}
                         for (f, b), hub in hubs.items() for s in seeds for layer in layers])


def test_the_hub_card_says_whether_each_familys_hub_moves_across_lengths():
    frame = _hub_rows({("copying", "short"): 2, ("copying", "long"): 2,
                       ("json_schema", "short"): 1, ("json_schema", "long"): 3})
    out = hubs_across_lengths(frame)
    table = out.tables["hubs_across_lengths"].set_index("family")
    assert table.loc["copying", "verdict"] == "hub stable across lengths"
    assert table.loc["json_schema", "verdict"] == "hub moves across lengths"
    assert table.loc["json_schema", "hub_per_length"] == "short:1,long:3"
    assert out.metrics["hub_stable_across_lengths"] == 0.5
    summary = SECTIONS.get("ablation").summary(frame)  # the section's summary: per bucket, then the card table
    assert summary.tables["hubs_across_lengths"].equals(out.tables["hubs_across_lengths"])
    hubs = summary.tables["hubs"].set_index("length")
    assert set(hubs.index) == {"short", "long"}
    assert summary.metrics["length_short/hub_layer_mode"] in (1, 2)  # families averaged within the bucket
    one = _hub_rows({("copying", "short"): 2})
    assert "hubs_across_lengths" not in SECTIONS.get("ablation").summary(one).tables  # one bucket: no card


def _steer_rows(gains: dict[tuple[str, str], float], prompting: dict[tuple[str, str], float]) -> pd.DataFrame:
    """Steering rows per (family, length): mean_diff at layer 1 gains `gain` over the random vector (ld_delta 0.1)
    at strength 1, a weaker cell at layer 0; and the prompting baseline's ld_delta."""
    rows = []
    for (f, b), gain in gains.items():
        for s in (0, 1):
            for layer, extra in ((0, 0.5 * gain), (1, gain)):
                rows += [{"family": f, "length": b, "seed": s, "layer": layer, "strength": 1.0,
                          "vector_type": "mean_diff", "ld_delta": 0.1 + extra},
                         {"family": f, "length": b, "seed": s, "layer": layer, "strength": 1.0,
                          "vector_type": "random", "ld_delta": 0.1}]
            rows.append({"family": f, "length": b, "seed": s, "layer": None, "strength": None,
                         "vector_type": "prompt", "ld_delta": prompting[(f, b)]})
    return pd.DataFrame(rows)


def test_the_steering_card_says_whether_steering_holds_or_degrades_with_length():
    from orchestrator.report.sections.steering import steering_across_lengths

    gains = {("factual_recall", "short"): 2.0, ("factual_recall", "long"): 0.4,  # keeps 20 %: degrades
             ("copying", "short"): 2.0, ("copying", "long"): 1.5}  # keeps 75 %: holds
    frame = _steer_rows(gains, {key: 1.0 if key[1] == "short" else 0.25 for key in gains})
    out = steering_across_lengths(frame)
    table = out.tables["steering_across_lengths"].set_index("family")
    assert table.loc["factual_recall", "verdict"] == "steering degrades with length"
    assert table.loc["copying", "verdict"] == "steering holds across lengths"
    assert table.loc["factual_recall", "gain_per_length"] == "short:+2.00, long:+0.40"  # the layer-1 cell, not layer 0
    assert table.loc["copying", "cell_per_length"] == "short:mean_diff@L1x1, long:mean_diff@L1x1"
    assert table.loc["copying", "prompting_per_length"] == "short:+1.00, long:+0.25"
    assert out.metrics["steering_holds_across_lengths"] == 0.5
    summary = SECTIONS.get("steering").summary(frame)  # the section's summary compares the buckets too
    assert summary.tables["steering_across_lengths"].equals(out.tables["steering_across_lengths"])


def test_the_dry_run_times_a_long_bucket_by_its_own_prompts(tmp_path, smollm2):
    """calibrate() times the first (short) split's forward; a long bucket's forward costs several times more, and the
    estimate scales each forward by its prompts' tokens: within 2x of the measured ratio (a flat estimate said 1x,
    and a 3 h length sweep looked like 17 min). The progress bar's ETA weighs the points the same way."""
    import time

    from interventions.forward import clean_run
    from orchestrator.cost import calibrate, work
    from orchestrator.driver import _costs

    sweep = _sweep(tmp_path, spec("steering", "lengths", model="smollm2-135m", n_train=4, n_eval=4,
                                  length=["short", {"min": 240, "max": 280}], extra={"baseline": {"shots": 0}},
                                  **STEER))
    part = sweep.parts[0]
    w = work(sweep, part, expand(sweep))
    cal = calibrate(sweep, part, pack_rows=4)
    n = part.model.n_layers
    estimated = {}
    for (rows, layers), scale, point in zip(w.forwards, w.lengths, expand(sweep)):
        estimated[point.values["length"]] = cal.forward(rows, layers, n) * scale
    measured = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as calibrate() and an actor
    try:
        for (key, _), one in part.splits.items():
            batch = FamilyRun(smollm2, one).eval_batch
            times = []
            for _ in range(3):
                start = time.thread_time()
                with torch.no_grad():
                    clean_run(smollm2, batch)
                times.append(time.thread_time() - start)
            measured[key.split("@")[1]] = sorted(times)[1]
    finally:
        torch.set_num_threads(threads)
    want, got = measured["240-280"] / measured["short"], estimated["240-280"] / estimated["short"]
    assert want > 3 and 0.5 < got / want < 2, (want, got)
    weights = {p.values["length"]: w for p, w in zip(expand(sweep), _costs(sweep, expand(sweep)).values())}
    assert 0.5 < weights["240-280"] / weights["short"] / want < 2, (weights, want)
