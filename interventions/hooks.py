"""Forward hooks: the only place that registers them; every handle is removed in `finally`."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from torch import Tensor, nn


def _output_tensor(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output  # decoder layers return a tensor or a tuple


def _first_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def _removed_after(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(modules: dict[int, nn.Module], inputs: bool = False) -> Iterator[dict[int, Tensor]]:
    """Record each module's output tensor (or, with inputs=True, its first input) under its key while the block runs."""
    seen: dict[int, Tensor] = {}
    if inputs:
        handles = [m.register_forward_pre_hook(
            lambda _m, args, kwargs, key=key: seen.__setitem__(key, _first_input(args, kwargs).detach()),
            with_kwargs=True) for key, m in modules.items()]
    else:
        handles = [m.register_forward_hook(
            lambda _m, _i, out, key=key: seen.__setitem__(key, _output_tensor(out).detach()))
            for key, m in modules.items()]
    with _removed_after(handles):
        yield seen


@contextmanager
def observe(modules: dict[int, nn.Module], fn: Callable[[int, Tensor, Tensor], None]) -> Iterator[None]:
    """While the block runs, call fn(key, first input, output tensor) after each module (reductions that keep
    no activations)."""
    handles = [m.register_forward_hook(
        lambda _m, args, kwargs, out, key=key: fn(key, _first_input(args, kwargs), _output_tensor(out)),
        with_kwargs=True) for key, m in modules.items()]
    with _removed_after(handles):
        yield


@contextmanager
def before(modules: dict, fn: Callable[[object, tuple, dict], None]) -> Iterator[None]:
    """While the block runs, call fn(key, args, kwargs) before each module runs (counting, not changing)."""
    handles = [m.register_forward_pre_hook(lambda _m, args, kwargs, key=key: fn(key, args, kwargs), with_kwargs=True)
               for key, m in modules.items()]
    with _removed_after(handles):
        yield


@contextmanager
def replace(module: nn.Module, fn: Callable[[Tensor], Tensor], inputs: bool = False) -> Iterator[None]:
    """While the block runs, `module`'s output tensor (or, with inputs=True, its first input) becomes fn(tensor),
    in the tensor's dtype (a float32 mean patched into a bfloat16 model stays bfloat16)."""
    given = fn

    def fn(x: Tensor) -> Tensor:
        return given(x).to(x.dtype)

    if inputs:
        def pre_hook(_m, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        def hook(_m, _i, out):
            return (fn(out[0]), *out[1:]) if isinstance(out, tuple) else fn(out)

        handle = module.register_forward_hook(hook)
    with _removed_after([handle]):
        yield


def count_hooks(root: nn.Module) -> int:
    """Forward (pre-)hooks left anywhere under root: 0 after every trial."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in root.modules())
