"""PEFT LoRA adapters: training on task families, adapter surgery (the adapter kind) and cross_model_patch.

The two kinds are declared in `kind.py` and `cross_model.py` and found by interventions' KINDS
registry on its first lookup; adapters imports interventions, never the other way round.
"""
