"""The full KINDS registry: importing this module registers every experiment kind (interventions' and adapters')."""
from interventions import KINDS
import adapters  # noqa: F401,E402  (registers the adapter kinds)

__all__ = ["KINDS"]
