"""Sweep orchestration: specs, grid, Ray Tune runner, MLflow record, cross-seed aggregation, CLI.

The Python API (api.py, docs/python.md) is imported on first use, so `import orchestrator` stays light:

    import orchestrator as oc
    atlas = oc.sweep("sweeps/smoke.yaml")     # or a YAML string, or a dict
    oc.load("smoke").table()
"""

__version__ = "0.1.0"

_API = ("sweep", "load", "Atlas")


def __getattr__(name: str):
    if name in _API:
        from orchestrator import api

        return getattr(api, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
