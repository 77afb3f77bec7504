"""The per-actor caches: an LRU bounded by count and bytes, what a family's baselines weigh, and the dry-run's
memory figure for them against what they weigh once computed (a length axis's buckets among them)."""
from __future__ import annotations

import torch

from interventions.cache import LRU, tensor_bytes
from interventions.context import FamilyRun
from orchestrator.cost import calibrate, memory, work
from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import spec, split


def test_tensor_bytes_counts_each_storage_once_and_a_slice_as_its_whole_storage():
    big = torch.zeros(10, 20)  # 800 bytes
    assert tensor_bytes(big) == 800
    assert tensor_bytes({"a": big, "b": [big[:, 0], (big[3],)]}) == 800  # views of one storage
    assert tensor_bytes(big[:, -1]) == 800  # a last-position slice keeps every position alive
    assert tensor_bytes(big[:, -1].clone()) == 40
    assert tensor_bytes([torch.ones(3, dtype=torch.int64), "text", 3]) == 24


def test_the_lru_drops_the_oldest_by_count():
    cache = LRU(2)
    for key in "abc":
        cache.get(key, lambda key=key: key)
    assert len(cache) == 2 and cache.get("a", lambda: "again") == "again"  # "a" was dropped, "b" then
    assert cache.get("c", lambda: "new") == "c"


def test_the_lru_keeps_the_value_in_use_and_at_most_max_bytes_of_the_others():
    cache = LRU(16, max_bytes=1000, weigh=tensor_bytes)
    for key in "abc":
        cache.get(key, lambda: [torch.zeros(100)])  # 400 bytes each: the others weigh 800, all kept
    assert [k in cache for k in "abc"] == [True] * 3 and cache.nbytes() == 1200
    d = cache.get("d", lambda: [torch.zeros(1000)])  # 4000 bytes in use; the others weigh 1200: the oldest goes
    assert [k in cache for k in "abcd"] == [False, True, True, True]
    d.append(torch.zeros(2000))  # the value in use grows after it was made (as baselines do)
    cache.get("b", lambda: None)  # now "c" (400) and "d" (12000) are the others: both go, the oldest first
    assert [k in cache for k in "abcd"] == [False, True, False, False]
    zero = LRU(16, max_bytes=0, weigh=tensor_bytes)
    for key in "xyz":
        zero.get(key, lambda: [torch.zeros(10)])
    assert len(zero) == 1 and "z" in zero  # nothing besides the value in use


def test_a_familys_train_activations_keep_only_the_last_position(tiny_llama):
    run = FamilyRun(tiny_llama, split(tiny_llama, n_train=8))
    assert run.nbytes() == 0
    run.train_acts(0)
    cfg = tiny_llama.config
    assert run.nbytes() == 3 * cfg.num_hidden_layers * 8 * cfg.hidden_size * 4  # three runs' last positions, float32


def test_the_dry_runs_cached_baselines_cover_what_the_longest_buckets_baselines_weigh(tmp_path):
    """With baseline_cache_mb 0 an actor keeps one (family, seed) at a time: the figure is the heaviest split's,
    measured here, not the first (short) one's."""
    (tmp_path / "s.yaml").write_text(spec("steering", "lengths", n_train=4, n_eval=3, family=["antonyms"],
                                          layer=[0], strength=[1.0], vector_type=["mean_diff"],
                                          length=["short", {"min": 120, "max": 160}],
                                          extra={"execution": {"baseline_cache_mb": 0}}))
    sweep = load_sweep(tmp_path / "s.yaml")
    part = sweep.parts[0]
    from interventions.models import load

    model = load(part.name)
    weighed = {}
    for key, one in part.splits.items():
        run = FamilyRun(model, one)
        run.clean_resid(0), run.train_acts(0)
        weighed[key] = run.nbytes()
    assert weighed[("antonyms@120-160", 0)] > weighed[("antonyms@short", 0)] + 300_000  # its residuals
    points = expand(sweep)
    cal = calibrate(sweep, part, pack_rows=3, repeats=1)
    cached = memory(sweep, part, work(sweep, part, points), cal)["cached baselines"]
    assert max(weighed.values()) <= cached <= 1.5 * max(weighed.values())
