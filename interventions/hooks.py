"""Forward hooks: the only place that registers them; every handle is removed in `finally`."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import Tensor, nn


def _output_tensor(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output  # decoder layers return a tensor or a tuple


@contextmanager
def capture(modules: dict[int, nn.Module]) -> Iterator[dict[int, Tensor]]:
    """Record each module's output tensor under its key while the block runs."""
    seen: dict[int, Tensor] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, key=key: seen.__setitem__(key, _output_tensor(out).detach()))
        for key, module in modules.items()
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def count_hooks(root: nn.Module) -> int:
    """Forward (pre-)hooks left anywhere under root: 0 after every trial."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in root.modules())
