"""Interventions on a loaded model: models, task families, forward passes, metrics and experiment kinds.

Every registry is complete on import: KINDS imports the modules here that declare kinds on its first
lookup. Packages above add their own (adapters/__init__.py: KINDS.add_sources); this package never names them.
"""
from interventions.ablation import ABLATIONS
from interventions.architectures import ARCHITECTURES
from interventions.families import FAMILIES
from interventions.kinds import KINDS
from interventions.models import MODELS
from interventions.registry import AtlasError, Registry
from interventions.steering import VECTORS

__all__ = ["ABLATIONS", "ARCHITECTURES", "AtlasError", "FAMILIES", "KINDS", "MODELS", "Registry", "VECTORS"]
