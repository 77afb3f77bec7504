"""Generation-check report: adherence, fully met prompts, loop share and repetition per decoding (and model)."""
from __future__ import annotations

from orchestrator.report.figures import metric_bars
from orchestrator.report.record import SweepRecord
from orchestrator.report.sections import Section, Shown, long_stats, section, seed_means

METRICS = ["adherence", "full_adherence", "loop_share", "repetition"]


@section("generation")
def generation_section(record: SweepRecord) -> Section:
    """One figure: each metric's mean +- std over seeds per decoding (x model, for a sweep of several)."""
    frame = record.frame
    by = ["decoding"] + (["model"] if len(record.models) > 1 and "model" in frame else [])
    frame = frame.assign(cell=frame[by].astype(str).agg(" / ".join, axis=1))
    shown = [m for m in METRICS if m in frame]
    parts = [seed_means(frame, ["cell"], m) for m in shown]
    per_seed = parts[0]
    for part in parts[1:]:
        per_seed = per_seed.merge(part, on=["seed", "cell"], how="outer")
    stats = long_stats(per_seed, ["cell"], shown)
    result = Section("generation")
    result.figures.append(Shown("generation_decoding", "adherence, loops and repetition per decoding",
                                "Mean over seeds; error bars ± cross-seed std (ddof=1). Greedy ignores the seed.",
                                metric_bars(stats, "cell", shown)))
    return result
