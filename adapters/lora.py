"""LoRA adapters with peft: the Adapter record (a peft folder in and out), and putting one on a model and off again.

An adapter's weights are kept in peft's saved layout
(`base_model.model.<module path>.lora_A.weight`, `(rank, in)`; `.lora_B.weight`, `(out, rank)`),
so a folder written here loads with `PeftModel.from_pretrained` and a peft folder loads here.
The actor's model is only ever changed inside `attached(...)`, which unloads in `finally`.
"""
from __future__ import annotations

import copy
import ctypes
import json
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from interventions.models import Model
from interventions.registry import AtlasError, first_line

if TYPE_CHECKING:  # peft (and the transformers modules it pulls in) is imported where it is used: seconds at start-up
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
PREFIX = "base_model.model."
LOSS_KEY = "atlas.loss"  # safetensors metadata: the training loss curve, JSON


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter: peft config, weights in peft's saved layout, a stable key, and its training loss curve."""

    config: LoraConfig
    weights: dict[str, Tensor]
    key: str  # hash of how it was made (settings and items) or of the folder it came from
    loss: tuple[float, ...] = ()  # per training step; empty for an adapter brought from a folder

    def pairs(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Module path -> (A (rank, in), B (out, rank))."""
        paths = [k[len(PREFIX):-len(".lora_A.weight")] for k in self.weights if k.endswith(".lora_A.weight")]
        return {p: (self.weights[f"{PREFIX}{p}.lora_A.weight"], self.weights[f"{PREFIX}{p}.lora_B.weight"])
                for p in sorted(paths)}

    def with_pairs(self, pairs: dict[str, tuple[Tensor, Tensor]], key: str) -> Adapter:
        weights = {}
        for path, (a, b) in pairs.items():
            weights[f"{PREFIX}{path}.lora_A.weight"], weights[f"{PREFIX}{path}.lora_B.weight"] = a, b
        return Adapter(self.config, weights, key, self.loss)

    def save(self, folder: Path) -> None:
        """Write a peft adapter folder: adapter_model.safetensors + adapter_config.json."""
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.weights.items()}, folder / WEIGHTS,
                  metadata={LOSS_KEY: json.dumps(list(self.loss)), "format": "pt"})
        self.config.save_pretrained(str(folder))

    def files(self) -> dict[str, bytes]:
        """The folder's files as bytes (MLflow artifacts)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save(Path(tmp))
            return {name: (Path(tmp) / name).read_bytes() for name in (WEIGHTS, CONFIG)}


def folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a loadable peft LoRA folder with safetensors weights, or None."""
    if not folder.exists():
        return f"no such adapter folder {str(folder)!r}"
    if not folder.is_dir():
        return f"{str(folder)!r} is not a peft adapter folder ({WEIGHTS} + {CONFIG})"
    if not (folder / WEIGHTS).is_file():
        return f"{str(folder)!r} has no {WEIGHTS} (only safetensors adapters are loaded)"
    if not (folder / CONFIG).is_file():
        return f"{str(folder)!r} has no {CONFIG}"
    try:
        with safe_open(str(folder / WEIGHTS), "pt") as f:
            keys = list(f.keys())
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except Exception as exc:  # a corrupt file: say which and why, in one line
        return f"{str(folder)!r}: cannot read ({type(exc).__name__}: {first_line(exc)})"
    if config.get("peft_type") != "LORA":
        return f"{str(folder)!r} is a {config.get('peft_type')!r} adapter, not LORA"
    if config.get("use_dora") or not any(k.endswith(".lora_A.weight") for k in keys):
        return f"{str(folder)!r} is not a plain LoRA adapter (DoRA and non-Linear targets are not supported)"
    return None


def load_folder(folder: Path, key: str) -> Adapter:
    """Read a peft LoRA folder (safetensors only)."""
    problem = folder_problem(folder)
    if problem:
        raise AtlasError(problem)
    with safe_open(str(folder / WEIGHTS), "pt") as f:
        loss = json.loads((f.metadata() or {}).get(LOSS_KEY, "[]"))
    from peft import LoraConfig

    return Adapter(LoraConfig.from_pretrained(str(folder)), load_file(folder / WEIGHTS), key, tuple(loss))


def tuner_layers(root: nn.Module) -> int:
    """peft layers left anywhere under root: 0 whenever no adapter is attached."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in root.modules())


def lora_layers(root: nn.Module) -> dict[str, LoraLayer]:
    """Module path (as in the base model) -> peft LoRA layer, while an adapter is attached."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in root.named_modules() if isinstance(m, LoraLayer)}


@contextmanager
def attached(model: Model, adapter: Adapter | None, config: LoraConfig | None = None) -> Iterator[nn.Module]:
    """The adapter's LoRA layers injected into model.module (in place) for the block; unloaded in `finally`.

    `adapter=None` with a `config` attaches peft's fresh initialisation (B = 0), for training.
    """
    from peft import get_peft_model, set_peft_model_state_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation notes from inside peft
        peft_model = get_peft_model(model.module, copy.deepcopy(config or adapter.config))
    try:
        if adapter is not None:
            result = set_peft_model_state_dict(peft_model, {k: v.to(model.device) for k, v in adapter.weights.items()})
            if result.unexpected_keys:
                raise AtlasError(f"adapter {adapter.key}: weights for modules the model lacks: "
                                 f"{result.unexpected_keys[0]} ...")
        yield peft_model
    finally:
        peft_model.unload()
        left = tuner_layers(model.module)
        if left or hasattr(model.module, "peft_config"):
            raise RuntimeError(f"{left} peft layers left on {model.name} after unloading an adapter")


@contextmanager
def disabled(peft_model: nn.Module, paths: set[str]) -> Iterator[None]:
    """The LoRA layers at these module paths switched off (base layer only) for the block."""
    layers = [m for name, m in lora_layers(peft_model.base_model.model).items() if name in paths]
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


@torch.no_grad()
def layer_norms(peft_model: nn.Module) -> dict[str, float]:
    """Module path -> ||B A||_F x scaling, from the attached peft layers (via the rank x rank Gram product)."""
    out = {}
    for path, layer in lora_layers(peft_model.base_model.model).items():
        a = layer.lora_A["default"].weight.double()  # (rank, in)
        b = layer.lora_B["default"].weight.double()  # (out, rank)
        gram = (b.T @ b) @ (a @ a.T)  # ||B A||_F^2 = trace(B^T B A A^T)
        out[path] = float(gram.trace().clamp_min(0).sqrt()) * abs(layer.scaling["default"])
    return out


def merged_copy(model: Model, adapter: Adapter) -> Model:
    """A copy of the model with the adapter merged into its weights (peft merge_and_unload); the model is untouched."""
    from peft import get_peft_model, set_peft_model_state_dict

    module = copy.deepcopy(model.module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(module, copy.deepcopy(adapter.config))
    set_peft_model_state_dict(peft_model, {k: v.to(model.device) for k, v in adapter.weights.items()})
    return Model(f"{model.name}+{adapter.key}", peft_model.merge_and_unload(), model.tokenizer, model.arch)


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc malloc_trim) after a large transient peak.

    A training step's activations and a merged model copy are freed, but glibc keeps the heap
    pages; over a sweep's trainings an actor otherwise grows by hundreds of MB per adapter.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass
