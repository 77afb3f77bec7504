"""Model loading: built-in packs (GGUF -> cached safetensors), tiny seeded models, hub ids and folders.

`describe(name)` reads only a config and a tokenizer (for validating a spec before
anything starts); `load(name, dtype=...)` returns the model in eval mode (float32 unless asked; any precision of
interventions/precision.py).
"""
from __future__ import annotations

import hashlib
import os
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from interventions import hub, packs
from interventions.architectures import ARCHITECTURES, Architecture
from interventions.packs import PACKS, cache_root  # noqa: F401  (cache_root: where adapters are cached too)
from interventions.registry import AtlasError, Registry, first_line

EMBEDDED = "smollm2-135m"
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Model:
    """A loaded model with what the interventions need to address it."""

    name: str
    module: nn.Module  # the *ForCausalLM, eval mode (float32 unless the spec asks for another dtype)
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

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype


@dataclass(frozen=True)
class ModelInfo:
    """What a spec is validated against: sizes and tokenizer, no weights."""

    name: str
    model_type: str
    n_layers: int
    n_heads: int
    d_model: int
    tokenizer: object
    config: object = field(default=None, repr=False, compare=False)

    @cached_property
    def n_params(self) -> int:
        """Parameters (tied embeddings once), counted on the meta device: no weights read."""
        return parameter_count(self.config)


Builtin = Callable[..., tuple[nn.Module | None, object]]  # (weights wanted?, dtype) -> (model or config, tokenizer)
MODELS: Registry[Builtin] = Registry("model")


def embedded_folder() -> Path:
    """The embedded SmolLM2 as a float32 safetensors folder, converted from the GGUF on first use."""
    return packs.folder(EMBEDDED)


def _from_folder(folder: str | Path, weights: bool, trust_remote_code: bool = False, dtype=torch.float32):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if not weights:
        return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code), tokenizer
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model, tokenizer


def _pack(name: str) -> Builtin:
    return lambda weights, dtype=torch.float32: _from_folder(packs.folder(name), weights, dtype=dtype)


for _name in PACKS:
    MODELS.register(_name)(_pack(_name))


def _tiny(model_type: str, weights: bool, dtype=torch.float32):
    """A 4-layer, d_model 64 random model of one architecture with the embedded tokenizer; init seeded by the name."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_folder())
    special = {f"{t}_token_id": getattr(tokenizer, f"{t}_token_id") for t in ("bos", "eos", "pad")}
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        **special, **ARCHITECTURES.get(model_type).tiny,
    )
    if not weights:
        return config, tokenizer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sum(map(ord, model_type)))
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.to(dtype), tokenizer


def _tiny_builtin(model_type: str) -> Builtin:
    return lambda weights, dtype=torch.float32: _tiny(model_type, weights, dtype)


for _name in ARCHITECTURES:
    MODELS.register(f"tiny-{_name}")(_tiny_builtin(_name))


def _resolve(name: str, weights: bool, trust_remote_code: bool, dtype=torch.float32):
    if name in MODELS:
        return MODELS.get(name)(weights, dtype)
    if Path(name).is_dir() or "/" in name or hub.looks_like_hub_id(name, MODELS.names()):
        if not Path(name).is_dir() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise AtlasError(f"no such model folder {name!r} (a hub id is org/name)")
        if not Path(name).is_dir():
            hub.check(name, MODELS.names())  # seconds, not transformers' minute of retries when offline
        if Path(name).is_dir():
            weights_files = sorted(Path(name).glob("*.safetensors"))
            if not weights_files:
                raise AtlasError(f"{name!r} has no *.safetensors weights (.bin/.pt files are pickles and never "
                                 "loaded)")
            for weights_file in weights_files:
                damage = packs.safetensors_damage(weights_file)
                if damage:
                    raise AtlasError(f"{name!r}: {weights_file.name} is damaged ({damage}); copy or save it again")
        try:
            return _from_folder(name, weights, trust_remote_code, dtype)
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
                     config.hidden_size, tokenizer, config)


def parameter_count(config) -> int:
    """The model's parameter count from its config alone (the module is built on the meta device), cached under the
    cache root by the config and the transformers version: building it imports the model's code, seconds the driver
    otherwise never spends."""
    import transformers

    text = f"{transformers.__version__}|{config.to_json_string(use_diff=False)}"
    return _remembered("parameter_counts.json", hashlib.sha256(text.encode()).hexdigest(), lambda: _count(config))


def _count(config) -> int:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=True):
        module = AutoModelForCausalLM.from_config(config)
    module.tie_weights()
    return sum(p.numel() for p in module.parameters())


def check_dtype(dtype: str, device: str = "cpu") -> None:
    """An AtlasError when `device` cannot run a decoder's operations in `dtype` (tried on a tiny probe)."""
    if dtype not in DTYPES:
        raise AtlasError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    kind = torch.device(device).type
    if kind == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise AtlasError(f"bfloat16 is not supported by this GPU ({torch.cuda.get_device_name()}); use float16 or "
                         "float32")
    try:
        _probe(getattr(torch, dtype), device)
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AtlasError(f"{dtype} cannot run on {kind} here ({reason}); use float32") from None


def _probe(dtype: torch.dtype, device: str) -> None:
    """The operations a decoder layer needs, on a few numbers: matmul, norms, softmax, attention, SiLU/GELU."""
    x = torch.randn(2, 3, 8, device=device).to(dtype)
    w = torch.randn(8, 8, device=device).to(dtype)
    y = torch.nn.functional.layer_norm(x @ w, (8,)) * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    q = y.view(2, 3, 2, 4).transpose(1, 2)
    z = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    torch.nn.functional.silu(z).softmax(-1).sum().item()
    torch.nn.functional.gelu(z, approximate="tanh").float().sum().item()


def load(name: str, trust_remote_code: bool = False, device: str = "cpu", dtype: str = "float32") -> Model:
    """The model in eval mode on `device`; `dtype` is any precision (interventions/precision.py): a float dtype, or
    int8 / nf4, whose decoder linear weights are quantised on load (activations float32)."""
    from interventions.precision import PRECISIONS, check_precision, quantise

    check_precision(dtype, device)
    module, tokenizer = _resolve(name, weights=True, trust_remote_code=trust_remote_code,
                                 dtype=getattr(torch, PRECISIONS.get(dtype).dtype))
    quantise(module, dtype, device).eval().requires_grad_(False)
    return Model(name, module, tokenizer, ARCHITECTURES.get(module.config.model_type))


@cache
def weights_digest(name: str) -> str:
    """A sha256 that names a model's weights, never loading a big model to get it: a pack's GGUF (checked against
    it when assembled), a tiny model's seeded state dict, a local folder's *.safetensors files (hashed once per file
    version, cached); "" for a hub id, whose weights are not on this machine until a trial loads them."""
    if name in PACKS:
        return "gguf:" + PACKS.get(name).sha256
    if name.startswith("tiny-") and name in MODELS:
        module, _ = MODELS.get(name)(True)
        digest = hashlib.sha256()
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        return "state_dict:" + digest.hexdigest()
    if Path(name).is_dir():
        files = sorted(Path(name).glob("*.safetensors"))
        return "safetensors:" + hashlib.sha256("".join(_file_digest(f) for f in files).encode()).hexdigest()
    return ""


def _file_digest(path: Path) -> str:
    """sha256 of one file, cached under the cache root by (path, size, mtime): seconds for a GB, once."""
    stat = path.stat()

    def digest() -> str:
        out = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(packs.BLOCK):
                out.update(block)
        return out.hexdigest()

    return _remembered("digests.json", f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}", digest)


def _remembered(file: str, key: str, compute: Callable[[], object]):
    """compute(), kept in the JSON index `file` under the cache root by `key`."""
    import json

    index = cache_root() / file
    try:
        known = json.loads(index.read_text()) if index.is_file() else {}
    except (OSError, ValueError):  # a damaged index is rebuilt
        known = {}
    if key not in known:
        known[key] = compute()
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        try:
            index.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(known, indent=0))
            tmp.replace(index)  # whole or not at all
        except OSError:  # a cache that cannot be written (or a full disk) only costs computing again next time
            with suppress(OSError):
                tmp.unlink()
    return known[key]
