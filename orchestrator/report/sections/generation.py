"""Generation-check report: adherence, fully met prompts, loop share and repetition per decoding (and model and
precision), and the table of model x precision x decoding beside the research's vibe check (research.py)."""
from __future__ import annotations

import pandas as pd

from orchestrator.numbers import fmt
from orchestrator.report.figures import metric_bars
from orchestrator.report.record import SweepRecord
from orchestrator.report.research import GENERATION, generation_figure
from orchestrator.report.sections import Section, Shown, long_stats, section, seed_means

METRICS = ["adherence", "full_adherence", "loop_share", "repetition"]
TABLE = [*METRICS, "decode_tokens_per_s"]
REFERENCE = "bfloat16"  # the precision decode speed is compared with (the research's)


def cells(frame: pd.DataFrame, models: list[str]) -> list[str]:
    """The axes a cell of the generation table is: decoding, then model and precision where the sweep varies them."""
    return ["decoding"] + [a for a in ("model", "precision") if a in frame and (a != "model" or len(models) > 1)
                           and frame[a].nunique() > 1]


def generation_table(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per cell of `by`: each metric's mean over seeds (families first, DESIGN §8), the decode speed as a share of
    the same model and decoding in REFERENCE precision, and the research's figure where the model has one."""
    shown = [m for m in TABLE if m in frame]
    per_seed = frame.groupby(["seed", *by], as_index=False, sort=False)[shown].mean()
    table = per_seed.groupby(by, as_index=False, sort=False)[shown].mean()
    if "precision" in by and "decode_tokens_per_s" in table:
        keys = [a for a in by if a != "precision"]
        ref = table[table["precision"] == REFERENCE][[*keys, "decode_tokens_per_s"]]
        table = table.merge(ref.rename(columns={"decode_tokens_per_s": "ref"}), on=keys, how="left")
        table = table.assign(speed_vs_bfloat16=table["decode_tokens_per_s"] / table["ref"]).drop(columns="ref")
    if "model" in table:
        for column in dict.fromkeys(name.split(" @ ")[0] for name in GENERATION.names()):
            if column in table:
                figures = [generation_figure(column, m) for m in table["model"]]
                table[f"research {column}"] = [f.text if f else "" for f in figures]
    return table


@section("generation")
def generation_section(record: SweepRecord) -> Section:
    """One figure: each metric's mean +- std over seeds per cell; and the table of every cell."""
    frame = record.frame.copy()
    if "model" not in frame:
        frame["model"] = record.model
    by = cells(frame, record.models)
    frame = frame.assign(cell=frame[by].astype(str).agg(" / ".join, axis=1))
    shown = [m for m in METRICS if m in frame]
    parts = [seed_means(frame, ["cell"], m) for m in shown]
    per_seed = parts[0]
    for part in parts[1:]:
        per_seed = per_seed.merge(part, on=["seed", "cell"], how="outer")
    stats = long_stats(per_seed, ["cell"], shown)
    result = Section("generation")
    result.figures.append(Shown("generation_decoding", f"adherence, loops and repetition per {' / '.join(by)}",
                                "Mean over seeds; error bars ± cross-seed std (ddof=1). Greedy ignores the seed.",
                                metric_bars(stats, "cell", shown)))
    keys = by if "model" in by else ["model", *by]
    table = generation_table(frame, keys)
    numeric = table.select_dtypes("number").columns
    result.tables.append((f"generation per {' x '.join(keys)} (mean over seeds; decode tokens/s after warm-up; "
                          f"speed vs {REFERENCE}: the same model and decoding)",
                          table.assign(**{c: table[c].map(lambda v: fmt(v, ".3g")) for c in numeric})))
    return result
