"""Interventions on a loaded model: models, task families, forward passes, metrics and experiment kinds.

Importing the package fills every registry (KINDS, VECTORS, ABLATIONS, FAMILIES, MODELS, ARCHITECTURES).
"""
from interventions import ablation, skipping, steering  # noqa: F401  (register the kinds, vectors, methods)
from interventions.ablation import ABLATIONS
from interventions.architectures import ARCHITECTURES
from interventions.families import FAMILIES
from interventions.kinds import KINDS
from interventions.models import MODELS
from interventions.registry import AtlasError, Registry
from interventions.steering import VECTORS

__all__ = ["ABLATIONS", "ARCHITECTURES", "AtlasError", "FAMILIES", "KINDS", "MODELS", "Registry", "VECTORS"]
