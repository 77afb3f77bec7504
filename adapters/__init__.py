"""PEFT LoRA adapters: training on task families, adapter surgery (the adapter kind) and cross_model_patch.

The two kinds are declared in `kind.py` and `cross_model.py`; this package adds those modules to interventions'
KINDS registry (imported on its next lookup). Adapters imports interventions, never the other way round: the
orchestrator imports this package so that its kinds are known wherever a sweep is read or run.
"""
from interventions.kinds import KINDS

KINDS.add_sources("adapters.kind", "adapters.cross_model")
