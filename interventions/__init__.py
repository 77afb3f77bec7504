"""Interventions on a loaded model: models, task families, forward passes, metrics and experiment kinds.

Every registry is complete on import: KINDS imports the modules that declare kinds (adapters' among
them) on its first lookup.
"""
from interventions.ablation import ABLATIONS
from interventions.architectures import ARCHITECTURES
from interventions.families import FAMILIES
from interventions.kinds import KINDS
from interventions.models import MODELS
from interventions.registry import AtlasError, Registry
from interventions.steering import VECTORS

__all__ = ["ABLATIONS", "ARCHITECTURES", "AtlasError", "FAMILIES", "KINDS", "MODELS", "Registry", "VECTORS"]
