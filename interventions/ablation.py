"""Ablation and activation patching: the ABLATIONS registry (seven methods) and the ablation kind.

A component of layer L (see components.py) is replaced on the clean run, or patched between
the clean and corrupt runs of the eval items. Replacements never touch padding positions, and with the
`positions` axis only the last real position (`last`) or every real position but the first (`all_but_first`,
sparing the attention sink); `all` (the default) replaces every real position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Literal

import torch
from pydantic import BeforeValidator
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
from interventions.layers import Layers, depth
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

    @property
    def recovers(self) -> bool:
        """Acts on the corrupt run (denoising): its trials report `recovery`, the share of the clean LD it brings
        back, which is also what ranks its layers and its screen cards (KL to the clean run is smallest exactly where
        the patch matters most)."""
        return self.base == "corrupt"


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


@method("position_mean")
def position_mean(run: FamilyRun, site: Site, base: Tensor, seed: int) -> Tensor:
    """The train mean taken per position from the end (aligned as `resample` is): eval position -k gets the mean
    of the train items' values at their own position -k, over the train items at least k long; a position beyond
    the longest train item gets the all-position mean (`mean`'s value)."""
    train = at_site(values(run, "train", site.component), site).double()
    weight = batch_of(run, "train").mask.double().view(*train.shape[:2], *[1] * (train.dim() - 2))
    counts = weight.sum(0)
    per_position = (train * weight).sum(0) / counts.clamp(min=1)
    overall = mean_value(run, site, base, seed)[0, 0].double()
    k = min(train.shape[1], base.shape[1])  # positions both have, counted from the end
    aligned = torch.where(counts[-k:] > 0, per_position[-k:], overall)
    out = overall.expand_as(base).clone()
    out[:, -k:] = aligned
    return out.to(base.dtype)


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
    whose KL to the clean run is smallest exactly where the patch matters most. A report's variant label
    ("mean[last]", see `variant`) ranks as its method."""
    method_name = method_name.split("[")[0]
    known = method_name in ABLATIONS
    return "recovery" if known and ABLATIONS.get(method_name).recovers else "kl"


POSITIONS = ("all", "last", "all_but_first")  # which real positions an ablation replaces (`all`: the default)


def variant(method_name: str, positions: str | None) -> str:
    """A method's label with its positions variant: "mean", "mean[last]", "mean[all_but_first]"."""
    return method_name if positions in (None, "all") else f"{method_name}[{positions}]"


def touched(mask: Tensor, positions: str = "all") -> Tensor:
    """(batch, pos) bool: the positions an ablation replaces (never padding)."""
    real = mask.bool()
    if positions == "all":
        return real
    index = torch.arange(real.shape[1], device=real.device).expand_as(real)
    first = torch.where(real, index, real.shape[1]).min(-1, keepdim=True).values
    last = torch.where(real, index, -1).max(-1, keepdim=True).values
    if positions == "last":
        return real & (index == last)
    assert positions == "all_but_first", positions
    return real & (index != first)


def first_norm_ratio(run: FamilyRun, layer: int) -> float:
    """The attention-sink signature at resid_post[layer] on the clean eval prompts: per item, the first real
    position's norm over the median norm of its other real positions; the mean over items (of two or more tokens)."""
    def compute() -> float:
        norms = run.clean_resid(layer).double().norm(dim=-1)
        ratios = [float(norms[i, -n] / norms[i, -n + 1:].quantile(0.5))
                  for i, n in enumerate(_lengths(run.eval_batch)) if n >= 2]
        return sum(ratios) / len(ratios) if ratios else float("nan")

    return run.memo(("first_norm_ratio", layer), compute)


HUB = ("layer", "mean")  # DESIGN §6: the hub is the layer whose `layer` mean-ablation moves the prediction most


def ablated_many(run: FamilyRun, seed: int, sites: list[tuple], prefix_reuse: bool = True) -> list[Tensor]:
    """Eval logits for each (site, method[, positions]), in one batched forward (the sites share a component and
    layer)."""
    patches = []
    for site, name, *positions in sites:
        m = ABLATIONS.get(name)
        base = at_site(values(run, m.base, site.component), site)
        value = m.fn(run, site, base, seed)
        keep = touched(run.eval_batch.mask, *positions).view(*base.shape[:2], *[1] * (base.dim() - 2))
        patches.append((m.base, site, torch.where(keep, value, base)))
    return patched_logits(run, patches, prefix_reuse)


def ablated_logits(run: FamilyRun, seed: int, site: Site, method_name: str, positions: str = "all") -> Tensor:
    return ablated_many(run, seed, [(site, method_name, positions)])[0]


def _all_or_list(value):
    return [value] if isinstance(value, (str, int)) else value


class AblationAxes(CommonAxes):
    component: axis(Literal[COMPONENTS])
    layer: Layers  # indices, `all`, {every: k}, {depth: [...]} (interventions/layers.py)
    method: axis(Annotated[str, registered(ABLATIONS)])
    head: Annotated[axis(int | Literal["all"]), BeforeValidator(_all_or_list)] | None = None  # only with `head`
    positions: Annotated[axis(Literal[POSITIONS]), BeforeValidator(_all_or_list)] | None = None  # absent: all


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
                    for positions in axes.get("positions", [None]):  # absent axis: points (and ids) as before
                        point = {"component": component, "layer": layer, "method": name}
                        point = point if head is None else {**point, "head": head}
                        points.append(point if positions is None else {**point, "positions": positions})
    return points


def check_ablation_splits(axes: dict, splits: dict) -> None:
    if not any(ABLATIONS.get(m).patching for m in axes["method"]):
        return
    for (family, _seed), split in splits.items():
        if any(not i.corrupt_prompt for i in (*split.train, *split.eval)):
            raise AtlasError(f"axes.method: patching methods need corrupt prompts but family {family!r} has items "
                             "without corrupt_prompt")


METRICS = ("kl", "target_prob_drop", "top1_agreement", "ld_drop", "recovery", "accuracy_clean",
           "accuracy_intervened", "depth", "first_norm_ratio")


@kind("ablation", axes=AblationAxes, metrics=METRICS, primary="kl", shown=("accuracy_clean",),
      pack_axes=("method", "head", "positions"), points=ablation_points, check_splits=check_ablation_splits,
      restarts_at_layer=True, baseline_copies=3)  # its runs also cache the corrupt run's and components' values
def ablation_trials(ctx: TrialContext, points: list[dict]) -> list[dict[str, float]]:
    """Grid points of one component and layer (any methods, heads and positions): replace or patch the component;
    metrics against the clean run, the layer's depth and its first-position norm ratio (`first_norm_ratio`)."""
    run = ctx.family
    sites = [(Site(p["component"], p["layer"], () if p.get("head") is None else (p["head"],)), p["method"],
              p.get("positions") or "all") for p in points]
    layer = points[0]["layer"]
    at_layer = {"depth": depth(layer, run.model.n_layers), "first_norm_ratio": first_norm_ratio(run, layer)}
    clean, target, distractor = run.clean_logits, run.target, run.distractor
    ld_clean = logit_diff(clean, target, distractor)
    results = []
    outs = ablated_many(run, ctx.seed, sites, ctx.prefix_reuse)
    for (_site, method_name, _positions), out_logits in zip(sites, outs):
        ld_out = logit_diff(out_logits, target, distractor)
        out = {**agreement_metrics(clean, out_logits, target), **at_layer}
        out.update(target_prob_drop=mean(target_prob(clean, target) - target_prob(out_logits, target)),
                   ld_drop=mean(ld_clean - ld_out))
        if ABLATIONS.get(method_name).recovers:  # denoising: how much of the clean LD comes back
            ld_corrupt = mean(logit_diff(corrupt_run(run)[0], target, distractor))
            gap = mean(ld_clean) - ld_corrupt
            out["recovery"] = (mean(ld_out) - ld_corrupt) / gap if gap != 0 else float("nan")
        results.append(out)
    return results
