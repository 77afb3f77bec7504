"""Where a trial's adapter comes from: the axes naming it (training settings or a peft folder), their checks.

`adapter: train` (the default) trains one LoRA per (model, family, seed, rank, alpha, steps,
lr, targets); any other value is a peft LoRA folder (adapter_model.safetensors +
adapter_config.json), relative to the spec's folder, and then the training axes do not apply.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Annotated, Callable, Literal, TypeVar

import torch
from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo
from torch import nn

from adapters.lora import Adapter, folder_problem, load_folder
from adapters.training import LoraSettings, cached_or_trained
from interventions.architectures import ARCHITECTURES, Architecture, part
from interventions.cache import LRU
from interventions.context import TrialContext
from interventions.kinds import CommonAxes, axis
from interventions.models import MODELS, ModelInfo
from interventions.registry import AtlasError

TRAIN, DEFAULT_TARGETS = "train", "default"
TRAINING_AXES = ("rank", "alpha", "steps", "lr", "targets")
V = TypeVar("V")


def _adapter_value(value: str, info: ValidationInfo) -> str:
    if value == TRAIN:
        return value
    base = Path((info.context or {}).get("base_dir", Path.cwd()))
    folder = (base / value).resolve()
    problem = folder_problem(folder)
    if problem:
        raise ValueError(problem)
    return str(folder)


def _joined(value):
    """`[q_proj, v_proj]` and `q_proj+v_proj` are the same targets value."""
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return value


Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SourceAxes(CommonAxes):
    """The adapter axes both adapter kinds share; the training ones apply to `adapter: train` only."""

    adapter: axis(Annotated[str, AfterValidator(_adapter_value)]) = [TRAIN]
    rank: axis(Annotated[int, Field(ge=1)]) = [8]
    alpha: axis(Positive | Literal["2r"]) = ["2r"]  # lora_alpha; "2r" = twice the rank (scaling alpha/r = 2)
    steps: axis(Annotated[int, Field(ge=1)]) = [20]
    lr: axis(Positive) = [1e-3]
    targets: axis(Annotated[str, BeforeValidator(_joined), Field(min_length=1)]) = [DEFAULT_TARGETS]


def target_names(value: str, arch: Architecture) -> tuple[str, ...]:
    return tuple(arch.lora_targets) if value == DEFAULT_TARGETS else tuple(value.split("+"))


def _config(name: str):
    if name in MODELS:
        return MODELS.get(name)(False)[0]
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name)


@lru_cache(maxsize=8)
def layer_linears(name: str) -> dict[str, tuple[int, int]]:
    """Linear module name -> (in, out) in a decoder layer of model `name`, from a weightless (meta) copy
    (GPT-2's Conv1D projections count: peft adapts them as linears with transposed weights)."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = _config(name)
    with torch.device("meta"):
        module = AutoModelForCausalLM.from_config(config)
    layer = part(module, ARCHITECTURES.get(config.model_type).layers)[0]
    return {n.rsplit(".", 1)[-1]: (m.in_features, m.out_features) if isinstance(m, nn.Linear) else tuple(m.weight.shape)
            for n, m in layer.named_modules() if isinstance(m, (nn.Linear, Conv1D))}


def check_targets(axes: dict, info: ModelInfo) -> None:
    known = layer_linears(info.name)
    arch = ARCHITECTURES.get(info.model_type)
    for i, value in enumerate(axes["targets"]):
        for name in target_names(value, arch):
            if name not in known:
                raise AtlasError(f"axes.targets.{i}: unknown target module {name!r} for the {info.model_type} "
                                 f"architecture (known: {', '.join(known)}, or 'default')")


def sources(axes: dict, info: ModelInfo) -> list[dict]:
    """Every adapter of the sweep as the axis values naming it; checks the target modules against the model."""
    check_targets(axes, info)
    found = []
    for adapter in axes["adapter"]:
        if adapter != TRAIN:
            found.append({"adapter": adapter})
            continue
        for combo in product(*(axes[a] for a in TRAINING_AXES)):
            found.append({"adapter": TRAIN, **dict(zip(TRAINING_AXES, combo))})
    return found


def source_rank(source: dict) -> int:
    """The LoRA rank of a source (read from the folder's config for a brought adapter)."""
    if source["adapter"] == TRAIN:
        return source["rank"]
    from peft import LoraConfig

    return LoraConfig.from_pretrained(source["adapter"]).r


def spread(per_source: list[list[dict]]) -> list[dict]:
    """Each source's first point, then the rest source by source: two actors start on two adapters at once."""
    return [p[0] for p in per_source if p] + [x for p in per_source for x in p[1:]]


def adapter_for(ctx: TrialContext, adapter: str = TRAIN, rank: int | None = None, alpha: float | str | None = None,
                steps: int | None = None, lr: float | None = None, targets: str | None = None) -> tuple[Adapter, str]:
    """This trial's adapter and where it came from: 'memory' (this actor), 'disk' (cache), 'trained', 'folder'."""
    made: dict[str, str] = {}
    if adapter != TRAIN:
        def read() -> Adapter:
            made["how"] = "folder"
            digest = hashlib.sha256((Path(adapter) / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]
            return load_folder(Path(adapter), f"folder-{digest}")

        found = ctx.family.memo(("adapter", adapter), read)
        return found, made.get("how", "memory")
    alpha = 2.0 * rank if alpha == "2r" else float(alpha)
    settings = LoraSettings(rank, alpha, steps, lr, target_names(targets, ctx.model.arch))

    def fit() -> Adapter:
        result, made["how"] = cached_or_trained(ctx.model, ctx.family.split, settings)
        return result

    return ctx.family.memo(("adapter", settings), fit), made.get("how", "memory")


def checkpoints_for(ctx: TrialContext, every: int, rank: int, alpha: float | str, steps: int, lr: float,
                    targets: str) -> list[tuple[int, Adapter]]:
    """The trained adapter's checkpoints every `every` steps, (step, adapter), trained once per actor and settings."""
    from adapters.training import checkpoints

    alpha = 2.0 * rank if alpha == "2r" else float(alpha)
    settings = LoraSettings(rank, alpha, steps, lr, target_names(targets, ctx.model.arch))
    return ctx.family.memo(("checkpoints", settings, every),
                           lambda: checkpoints(ctx.model, ctx.family.split, settings, every))


_RECENT: dict[str, LRU] = {}
RECENT_SIZE = 2  # per purpose: adapted runs hold every layer's residuals (~30 MB each on the embedded model)


def recent(purpose: str, key: tuple, compute: Callable[[], V]) -> V:
    """A small per-process LRU for each purpose (adapted runs, merged runs, other models) of large values."""
    return _RECENT.setdefault(purpose, LRU(RECENT_SIZE)).get(key, compute)
