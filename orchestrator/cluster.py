"""Ray for a sweep: checking that the cluster to join answers, starting or joining it, and its resources."""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator

import ray

from interventions.registry import AtlasError, first_line
from orchestrator.cost import ACTOR_NICE
from orchestrator.signals import shielded
from orchestrator.spec import ActorResources


def check_address(address: str | None, timeout: float = 3.0) -> None:
    """Fail fast when the Ray cluster to join does not answer (ray.init would wait for minutes).

    'auto' is resolved the way Ray resolves it (RAY_ADDRESS, then the cluster `ray start` left
    on this machine); no address at all starts a local Ray, so there is nothing to check.
    """
    if address is None or address == "local":
        return
    target = address
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment  # Ray 2.x; private, so guarded
        except ImportError:
            return  # leave it to ray.init
        try:
            target = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise AtlasError("--address auto: no running Ray cluster found on this machine (start one with `ray up "
                             "cluster.yaml` or `ray start --head`, or drop --address for a local Ray)") from None
    host, sep, port = target.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise AtlasError(f"--address {address}: expected 'auto' or host:port, not {target!r}")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise AtlasError(f"--address {address}: no Ray cluster answered at {host}:{port} ({reason})") from None


# A local Ray's raylet starts one worker per CPU as it starts (these preload the model, startup.py); with
# prestart_worker_first_driver a second set starts for this driver's job and gets the actors while the first loads.
# Ray runs its workers at nice 15 by default: any process at nice 0 beside the sweep (a test runner, a build, a
# second sweep's driver) then takes nearly all the CPU from the actors, and on 2 busy cores a 30 s sweep ran 5 min.
# The actors are the sweep's work: they run at the driver's niceness (cost.ACTOR_NICE, which the dry-run probes at).
LOCAL_RAY = {"prestart_worker_first_driver": False, "worker_niceness": ACTOR_NICE}


@contextmanager
def ray_session(address: str | None, needed: bool = True, env: dict[str, str] | None = None) -> Iterator[None]:
    """Ray for the block: joined at `address`, or started here; shut down afterwards only if started here.

    `env`: variables the processes of a Ray started here inherit (startup.preload_env); not set when joining."""
    started = needed and not ray.is_initialized()
    try:
        if started:
            saved = {k: os.environ.get(k) for k in env or {}}
            if address in (None, "local"):
                os.environ.update(env or {})
            try:
                # "local", never None: Ray would join the last `ray start` cluster of this machine, dead or alive
                local = address in (None, "local")
                ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR", **({"_system_config": LOCAL_RAY} if local else {}))
            except ConnectionError as exc:
                raise AtlasError(f"--address {address}: no Ray cluster answered ({first_line(exc)})") from None
            finally:
                for key, value in saved.items():  # the raylet has its copy; nothing else of ours inherits them
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        yield
    finally:
        if started:  # also after a Ctrl-C inside ray.init: whatever it started stops here
            with shielded():
                ray.shutdown()


def check_resources(want: ActorResources, memory: int = 0, model: str = "") -> None:
    """The cluster can place one trial: its CPUs, GPUs and memory are at least what a trial asks for."""
    have = ray.cluster_resources()
    if have.get("memory", memory) < memory:
        raise AtlasError(f"resources.memory_gb: an actor of {model} asks for {memory / 2**30:.1f} GiB but the Ray "
                         f"cluster offers {have['memory'] / 2**30:.1f} GiB of memory (set a smaller "
                         "resources.memory_gb if you know it fits)")
    if want.gpu > 0 and have.get("GPU", 0) < want.gpu:
        raise AtlasError(f"resources.gpu: {want.gpu} GPU per trial requested but the Ray cluster has "
                         f"{have.get('GPU', 0):g} GPUs")
    if have.get("CPU", 0) < want.cpu:
        raise AtlasError(f"resources.cpu: {want.cpu} CPUs per trial requested but the Ray cluster has "
                         f"{have.get('CPU', 0):g}")
