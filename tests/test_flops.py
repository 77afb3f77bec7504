"""Model FLOPs (interventions/flops.py) against torch's FlopCounterMode, on tiny models of every architecture.

FlopCounterMode counts matmuls (mm, addmm, bmm) as 2·m·n·k, as the helper does; it does not see CPU sdpa
attention (no FLOP formula for its CPU kernel), so these models run with eager attention, whose scores and
values are bmm. Neither side counts norms, activations or softmax.
"""
from __future__ import annotations

import time
import types

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from interventions import models
from interventions.architectures import ARCHITECTURES
from interventions.attribution import gradients
from interventions.flops import counting, forward_flops, layer_backward, matmul_rate
from interventions.forward import clean_run, encode, run_from
from interventions.generation import greedy
from orchestrator import worker
from orchestrator.driver import worker_settings
from orchestrator.efficiency import Efficiency
from orchestrator.grid import expand, packs
from orchestrator.spec import load_sweep
from tests.conftest import context, spec

TOLERANCE = 0.02  # the helper and FlopCounterMode count the same matmuls; 2% leaves room for what neither counts
PROMPTS = ["The capital of France is", "one two three four five six seven eight"]


def eager(name: str) -> models.Model:
    model = models.load(name)
    model.module.set_attn_implementation("eager")  # FlopCounterMode sees attention as bmm
    return model


def measured(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_forward_matches_flop_counter(arch):
    model = eager(f"tiny-{arch}")
    batch = encode(model.tokenizer, PROMPTS)
    config = model.module.config
    helper = forward_flops(model.arch.widths(config), config.num_hidden_layers, *batch.ids.shape)
    with counting(model) as tally:
        truth = measured(lambda: clean_run(model, batch))
    assert helper == pytest.approx(truth, rel=TOLERANCE)
    assert tally.total == helper and tally.backward == 0


@pytest.mark.parametrize("start", [2, 4])
def test_started_at_layer(tiny_llama, start):
    """A run from layer `start` on a cached stream: layers start..n-1 and the last position's unembedding only."""
    model = eager("tiny-llama")
    batch = encode(model.tokenizer, PROMPTS)
    resid = clean_run(model, batch)[1][start - 1]
    n_layers = model.module.config.num_hidden_layers
    with counting(model) as tally:
        truth = measured(lambda: run_from(model, resid, batch, start))
    helper = forward_flops(model.arch.widths(model.module.config), n_layers, *batch.ids.shape, start=start)
    assert helper == pytest.approx(truth, rel=TOLERANCE)
    assert tally.total == helper
    full = forward_flops(model.arch.widths(model.module.config), n_layers, *batch.ids.shape)
    assert helper < full  # the cached layers are not counted


def test_generation_with_a_kv_cache():
    """Greedy decoding: each new position attends to the cached ones (a sliding-window cache keeps fewer, so Mistral
    and Gemma generation is counted a little high)."""
    model = eager("tiny-llama")
    batch = encode(model.tokenizer, PROMPTS)
    with counting(model) as tally:
        truth = measured(lambda: greedy(model, batch, 5))
    assert tally.total == pytest.approx(truth, rel=1e-4)  # the cached positions are ~1% of it: 2% would miss them


def test_backward_of_attribution():
    """Attribution's forward and input-gradient backward: counted high by at most layer 0's backward, the part
    autograd skips below the lowest activation whose gradient is asked for."""
    model = eager("tiny-llama")
    ctx = context(model)
    batch = ctx.family.eval_batch
    with counting(model) as tally:
        truth = measured(lambda: gradients(ctx.family, "clean"))
    slack = layer_backward(model.arch.widths(model.module.config), *batch.ids.shape)
    print(f"counted {tally.forward} + {tally.backward}, FlopCounterMode {truth}, slack {slack}")
    assert tally.backward > 0
    assert truth <= tally.total * (1 + TOLERANCE)
    assert tally.total <= (truth + slack) * (1 + TOLERANCE)


def test_matmul_rate_is_cached():
    rate = matmul_rate(64, 64, 128, 1, seconds=0.01)
    assert rate > 0 and matmul_rate(64, 64, 128, 1, seconds=0.01) == rate


def test_matmul_rate_ends_when_the_matmul_runs_outside_the_calling_thread(monkeypatch):
    """A BLAS pool can run the matmul while the calling thread waits: its CPU clock then barely moves. The rate is
    then timed by the wall clock, and the timing ends (it had spun for 10 min in a CI actor, counting CPU time)."""
    import interventions.flops as flops

    monkeypatch.setattr(flops.time, "thread_time", lambda: 0.0)  # the calling thread never on the CPU
    start = time.perf_counter()
    rate = flops.matmul_rate.__wrapped__(64, 64, 128, 1, seconds=0.05)
    assert 0 < rate < float("inf") and time.perf_counter() - start < 2


def test_worker_reports_the_flops_it_ran(tmp_path, monkeypatch):
    """One tiny steering trial through worker.run_trial (no Ray): its reported FLOPs, baselines included, equal
    what FlopCounterMode counts while the same trial runs."""
    (tmp_path / "s.yaml").write_text(spec("steering", "flops", layer=[1], strength=[0.5, -1.0],
                                          vector_type=["mean_diff"], family=["antonyms", "copying"]))
    sweep = load_sweep(tmp_path / "s.yaml")
    pack = packs(sweep, expand(sweep))[0]
    reports: list[dict] = []
    monkeypatch.setattr(worker, "tune", types.SimpleNamespace(report=reports.append))
    monkeypatch.setattr(worker, "ray", types.SimpleNamespace(
        get_runtime_context=lambda: types.SimpleNamespace(get_node_id=lambda: "node"), get_gpu_ids=lambda: []))
    monkeypatch.setattr(worker, "load", lambda *args: eager(args[0]))
    monkeypatch.setattr(worker, "matmul_rate", lambda *args: 1.0)  # its own matmul is not the trial's
    monkeypatch.setattr(worker, "_MODEL", {})
    monkeypatch.setattr(worker, "_RUNS", worker.LRU(16, weigh=worker.FamilyRun.nbytes))  # baselines counted here
    config = {"pack": [{"trial_id": p.trial_id, "point": p.values, "model": p.model} for p in pack]}
    threads = torch.get_num_threads()
    try:
        truth = measured(lambda: worker.run_trial(config, {sweep.parts[0].name: sweep.parts[0].splits},
                                                  worker_settings(sweep)))
    finally:
        torch.set_num_threads(threads)  # the trial set the actor's
    print(f"reported {reports[0]['flops']}, FlopCounterMode {truth}")
    assert reports[0]["flops"] == pytest.approx(truth, rel=TOLERANCE)
    assert reports[0]["compute_seconds"] > 0 and reports[0]["matmul_flops_per_s"] == 1.0


def test_efficiency_sums_the_trials():
    """The driver's sum: FLOPs per trial-second against the actors' median matmul rate; old results are skipped."""
    e = Efficiency()
    e.start()
    e.add({"flops": 4e9, "compute_seconds": 2.0, "matmul_flops_per_s": 1e10, "worker": "a", "cpu_seconds": 1.0})
    e.add({"flops": 2e9, "compute_seconds": 1.0, "matmul_flops_per_s": 1e10, "worker": "b"})
    e.add({"trial_seconds": 1.0})
    e.stop()
    m = e.metrics()
    assert m["model_flops"] == 6e9 and m["flops_per_trial_s"] == 2e9 and m["efficiency"] == pytest.approx(0.2)
    assert m["wall_efficiency"] == pytest.approx(6e9 / m["wall_s"] / 2e10)
    assert m["cpu_efficiency"] == pytest.approx(0.4)  # only the trials with a CPU time: 4e9 in 1 s
    assert "20.0% of its dense matmul rate" in e.line() and Efficiency().line() is None
