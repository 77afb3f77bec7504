"""Ablation and activation patching: the ABLATIONS registry (six methods) and the ablation kind.

A component of layer L (see components.py) is replaced on the clean run, or patched between
the clean and corrupt runs of the eval items. Replacements never touch padding positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Literal

import torch
from pydantic import BeforeValidator, Field
from torch import Tensor

from interventions.components import (
    COMPONENTS,
    Site,
    at_site,
    batch_of,
    corrupt_run,
    masked_means,
    patched_logits,
    values,
)
from interventions.context import FamilyRun, TrialContext, seeded_generator
from interventions.forward import Batch
from interventions.kinds import CommonAxes, axis, kind, registered
from interventions.metrics import agreement_metrics, logit_diff, mean, target_prob
from interventions.registry import AtlasError, Registry


def item_generator(seed: int, site: Site, item: int) -> torch.Generator:
    """The generator of one eval item's random draws (resample choice, noise): independent of batching."""
    return seeded_generator(seed, site.layer, COMPONENTS.index(site.component), *site.heads, item)


def _lengths(batch: Batch) -> list[int]:
    return batch.mask.sum(-1).tolist()


@dataclass(frozen=True)
class Method:
    """How a replacement is made: fn(run, site, base value, seed) -> replacement, and which eval run it acts on."""

    fn: Callable[[FamilyRun, Site, Tensor, int], Tensor]
    base: Literal["clean", "corrupt"] = "clean"
    patching: bool = False  # reads the corrupt prompts


ABLATIONS: Registry[Method] = Registry("ablation method")


def method(name: str, base: str = "clean", patching: bool = False):
    def add(fn):
        ABLATIONS.register(name)(Method(fn, base, patching))
        return fn
    return add


@method("zero")
def zero(run: FamilyRun, site: Site, base: Tensor, seed: int) -> Tensor:
    return torch.zeros_like(base)


def train_mean(run: FamilyRun, component: str) -> dict[int, Tensor]:
    """Per layer: the component's mean over every (non-padding) position of the train prompts.

    One train forward gives every component's means (summed in the hooks: no activations kept).
    """
    return run.memo(("means", "train"), lambda: masked_means(run, "train"))[component]


@method("mean")
def mean_value(run: FamilyRun, site: Site, base: Tensor, seed: int) -> Tensor:
    m = train_mean(run, site.component)[site.layer]
    return (m[list(site.heads)] if site.component == "head" else m).expand_as(base)


def resample_choice(seed: int, site: Site, item: int, eval_len: int, train_lens: list[int]) -> int:
    """The train item whose value eval item `item` gets: seeded, among train items at least as long (else any)."""
    fits = [j for j, n in enumerate(train_lens) if n >= eval_len] or list(range(len(train_lens)))
    return fits[int(torch.randint(len(fits), (1,), generator=item_generator(seed, site, item)))]


@method("resample")
def resample(run: FamilyRun, site: Site, base: Tensor, seed: int) -> Tensor:
    """Each eval item gets a train item's value, aligned from the end (left padding: the last positions agree)."""
    train = at_site(values(run, "train", site.component), site)
    train_lens, out = _lengths(batch_of(run, "train")), base.clone()
    for i, n in enumerate(_lengths(run.eval_batch)):
        j = resample_choice(seed, site, i, n, train_lens)
        k = min(n, train_lens[j])  # positions both items have, counted from the end
        out[i, -k:] = train[j, -k:]
    return out


@method("random")
def random(run: FamilyRun, site: Site, base: Tensor, seed: int) -> Tensor:
    """Seeded Gaussian noise with the norm of the value it replaces, per position (and per head)."""
    out = base.clone()
    for i, n in enumerate(_lengths(run.eval_batch)):
        noise = torch.randn(n, *base.shape[2:], generator=item_generator(seed, site, i), dtype=torch.float64)
        noise = noise / noise.norm(dim=-1, keepdim=True)
        out[i, -n:] = (noise * base[i, -n:].double().norm(dim=-1, keepdim=True)).to(base.dtype)
    return out


@method("corrupt_to_clean", patching=True)
def corrupt_to_clean(run: FamilyRun, site: Site, base: Tensor, seed: int) -> Tensor:
    """Noising: the clean run gets the corrupt run's value."""
    return at_site(values(run, "corrupt", site.component), site)


@method("clean_to_corrupt", base="corrupt", patching=True)
def clean_to_corrupt(run: FamilyRun, site: Site, base: Tensor, seed: int) -> Tensor:
    """Denoising: the corrupt run gets the clean run's value."""
    return at_site(values(run, "clean", site.component), site)


def effect_metric(method_name: str) -> str:
    """What ranks layers for a method: `kl`, or `recovery` for a method acting on the corrupt run (denoising),
    whose KL to the clean run is smallest exactly where the patch matters most."""
    known = method_name in ABLATIONS
    return "recovery" if known and ABLATIONS.get(method_name).base == "corrupt" else "kl"


HUB = ("layer", "mean")  # DESIGN §6: the hub is the layer whose `layer` mean-ablation moves the prediction most


def ablated_many(run: FamilyRun, seed: int, sites: list[tuple[Site, str]], prefix_reuse: bool = True) -> list[Tensor]:
    """Eval logits for each (site, method), in one batched forward (the sites share a component and layer)."""
    patches = []
    for site, name in sites:
        m = ABLATIONS.get(name)
        base = at_site(values(run, m.base, site.component), site)
        value = m.fn(run, site, base, seed)
        keep = run.eval_batch.mask.bool().view(*base.shape[:2], *[1] * (base.dim() - 2))
        patches.append((m.base, site, torch.where(keep, value, base)))
    return patched_logits(run, patches, prefix_reuse)


def ablated_logits(run: FamilyRun, seed: int, site: Site, method_name: str) -> Tensor:
    return ablated_many(run, seed, [(site, method_name)])[0]


def _all_or_list(value):
    return [value] if isinstance(value, (str, int)) else value


class AblationAxes(CommonAxes):
    component: axis(Literal[COMPONENTS])
    layer: axis(Annotated[int, Field(ge=0)])
    method: axis(Annotated[str, registered(ABLATIONS)])
    head: Annotated[axis(int | Literal["all"]), BeforeValidator(_all_or_list)] | None = None  # only with `head`


def ablation_points(axes: dict, info) -> list[dict]:
    heads = axes.get("head")
    if heads is not None and "head" not in axes["component"]:
        raise AtlasError("axes.head: only used with component 'head' (components here: "
                         f"{', '.join(axes['component'])})")
    if heads is None and "head" in axes["component"]:
        raise AtlasError("axes.head: component 'head' needs a head axis (head indices, or 'all')")
    for i, h in enumerate(heads or ()):
        if h != "all" and not 0 <= h < info.n_heads:
            raise AtlasError(f"axes.head.{i}: head {h} is outside 0..{info.n_heads - 1} "
                             f"({info.name} has {info.n_heads} heads)")
    expanded = sorted({x for h in heads or () for x in (range(info.n_heads) if h == "all" else [h])})
    points = []
    for component in axes["component"]:
        for layer in axes["layer"]:
            for head in expanded if component == "head" else [None]:
                for name in axes["method"]:
                    point = {"component": component, "layer": layer, "method": name}
                    points.append(point if head is None else {**point, "head": head})
    return points


def check_ablation_splits(axes: dict, splits: dict) -> None:
    if not any(ABLATIONS.get(m).patching for m in axes["method"]):
        return
    for (family, _seed), split in splits.items():
        if any(not i.corrupt_prompt for i in (*split.train, *split.eval)):
            raise AtlasError(f"axes.method: patching methods need corrupt prompts but family {family!r} has items "
                             "without corrupt_prompt")


METRICS = ("kl", "target_prob_drop", "top1_agreement", "ld_drop", "recovery", "accuracy_clean",
           "accuracy_intervened")


@kind("ablation", axes=AblationAxes, metrics=METRICS, primary="kl", shown=("accuracy_clean",),
      pack_axes=("method", "head"), points=ablation_points, check_splits=check_ablation_splits)
def ablation_trials(ctx: TrialContext, points: list[dict]) -> list[dict[str, float]]:
    """Grid points of one component and layer (any methods and heads): replace or patch the component;
    metrics against the clean run."""
    run = ctx.family
    sites = [(Site(p["component"], p["layer"], () if p.get("head") is None else (p["head"],)), p["method"])
             for p in points]
    clean, target, distractor = run.clean_logits, run.target, run.distractor
    ld_clean = logit_diff(clean, target, distractor)
    results = []
    for (_site, method_name), out_logits in zip(sites, ablated_many(run, ctx.seed, sites, ctx.prefix_reuse)):
        ld_out = logit_diff(out_logits, target, distractor)
        out = agreement_metrics(clean, out_logits, target)
        out.update(target_prob_drop=mean(target_prob(clean, target) - target_prob(out_logits, target)),
                   ld_drop=mean(ld_clean - ld_out))
        if ABLATIONS.get(method_name).base == "corrupt":  # denoising: how much of the clean LD comes back
            ld_corrupt = mean(logit_diff(corrupt_run(run)[0], target, distractor))
            gap = mean(ld_clean) - ld_corrupt
            out["recovery"] = (mean(ld_out) - ld_corrupt) / gap if gap != 0 else float("nan")
        results.append(out)
    return results
