"""Training a LoRA adapter on a family's train items: seeded, CPU-deterministic, cached per actor and on disk.

The loss is cross-entropy on the target token at the last prompt position, full batch
(every train item every step), AdamW without weight decay. The initialisation (peft's:
A Kaiming-uniform, B = 0) is seeded by (seed, family), so the same settings give the same
adapter bit for bit on a CPU. Adapters are cached under `<cache>/adapters/<key>/` (a peft
folder, written atomically under a file lock so two actors never train the same one twice).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from adapters.lora import Adapter, attached, load_folder, trim_heap
from interventions.families import Split
from interventions.forward import encode, last_position, position_ids, single_token_ids
from interventions.models import Model, cache_root

if TYPE_CHECKING:  # peft is imported where it is used (adapters/lora.py says why)
    from peft import LoraConfig

FORMAT = 1  # bump when training changes, so that old cached adapters are not reused


@dataclass(frozen=True)
class LoraSettings:
    rank: int  # r
    alpha: float  # lora_alpha; peft scales B A by alpha / rank
    steps: int  # optimiser steps, full batch
    lr: float  # AdamW learning rate
    targets: tuple[str, ...]  # module names in every decoder layer (q_proj, v_proj, ...)

    def config(self) -> LoraConfig:
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, target_modules=list(self.targets), lora_dropout=0.0,
                          bias="none")


def adapter_dir() -> Path:
    """Where trained adapters are cached: $ATLAS_ADAPTER_CACHE, else <cache root>/adapters."""
    return Path(os.environ.get("ATLAS_ADAPTER_CACHE") or cache_root() / "adapters")


def adapter_key(model: Model, split: Split, settings: LoraSettings) -> str:
    """Hash of everything that makes the adapter: model, train items, seed and settings."""
    made_of = {"format": FORMAT, "model": model.name, "family": split.family, "seed": split.seed,
               "train": [i.to_dict() for i in split.train], "settings": asdict(settings)}
    return hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:16]


def init_seed(split: Split) -> int:
    digest = hashlib.sha256(f"lora-init:{split.family}:{split.seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def train(model: Model, split: Split, settings: LoraSettings, key: str, every: int | None = None,
          saved: list[tuple[int, Adapter]] | None = None) -> Adapter:
    """Fit a fresh LoRA on the train items; the model is left as it was. With `every` = k, the LoRA state after
    steps k, 2k, ... (and the last step) is appended to `saved` as (step, adapter) (checkpoints kept in memory)."""
    from peft import get_peft_model_state_dict

    batch = encode(model.tokenizer, [i.prompt for i in split.train]).to(model.device)
    target = single_token_ids(model.tokenizer, [i.target for i in split.train]).to(model.device)
    pos = position_ids(batch.mask)
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(init_seed(split))
        with attached(model, None, settings.config()) as peft_model, torch.enable_grad():
            params = [p for p in peft_model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
            losses = []
            for step in range(1, settings.steps + 1):
                logits = model.module(input_ids=batch.ids, attention_mask=batch.mask, position_ids=pos,
                                      use_cache=False, logits_to_keep=last_position(batch)).logits[:, -1]
                loss = torch.nn.functional.cross_entropy(logits.float(), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if every and saved is not None and (step % every == 0 or step == settings.steps):
                    state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
                    saved.append((step, Adapter(settings.config(), state, f"{key}-step{step}", tuple(losses))))
            weights = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    trim_heap()
    return Adapter(settings.config(), weights, key, tuple(losses))


def cached_or_trained(model: Model, split: Split, settings: LoraSettings) -> tuple[Adapter, str]:
    """The adapter from the disk cache, else trained now and cached; -> (adapter, 'disk' or 'trained')."""
    key = adapter_key(model, split, settings)
    root = adapter_dir()
    folder = root / key
    if folder.is_dir():
        return load_folder(folder, key), "disk"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another actor training the same adapter: wait, then read its folder
        if folder.is_dir():
            return load_folder(folder, key), "disk"
        adapter = train(model, split, settings, key)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
        adapter.save(tmp)
        try:
            tmp.rename(folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return adapter, "trained"


def checkpoints(model: Model, split: Split, settings: LoraSettings, every: int) -> list[tuple[int, Adapter]]:
    """(step, adapter) after steps every, 2 every, ... and the last: the same training as `train` (its last checkpoint
    is the trained adapter bit for bit on a CPU), never cached on disk."""
    saved: list[tuple[int, Adapter]] = []
    train(model, split, settings, adapter_key(model, split, settings), every, saved)
    return saved
