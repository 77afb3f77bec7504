"""PEFT LoRA adapters: training on task families, adapter surgery (the adapter kind) and cross_model_patch.

Importing the package registers both kinds in interventions' KINDS registry; adapters
imports interventions, never the other way round.
"""
from adapters import cross_model, kind  # noqa: F401  (register the adapter and cross_model_patch kinds)
from adapters.kind import ADAPTER_OPS

__all__ = ["ADAPTER_OPS"]
