"""A plain (non-editable) install of the checkout exposes the twistd plugin.

The development install is editable in "compat" mode, which leaves
``twisted/plugins`` visible from the checkout; that hides packaging mistakes
(the plugin file missing from the wheel, an ``__init__.py`` in
``twisted/plugins`` shadowing Twisted's own package, the plugin importing
from the checkout). So this test installs a *copy* of the source tree into a
fresh venv, exactly as ``pip install <checkout>`` does, and asks twistd from
that venv what it can run, from a directory where the checkout is not on
``sys.path``.

Offline by design: CI may only reach package registries while installing,
and tests may only talk to 127.0.0.1. The fresh venv therefore gets its
dependencies (Twisted, Klein, ... and the build backend, setuptools) from the
outer test venv through a one-line ``.pth`` file naming the outer
site-packages directory. A plain path line in a ``.pth`` adds that directory
to ``sys.path`` *without* processing the ``.pth`` files inside it, so the
outer venv's editable-install hook (which points at the checkout) stays
inactive in the fresh venv. pip runs with ``--no-index --no-deps
--no-build-isolation``: no registry is consulted, and the build uses the
outer venv's setuptools (which must support the PEP 639 ``license`` string in
pyproject.toml, i.e. setuptools >= 77).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.integration.conftest import Arg, Clients

pytestmark = pytest.mark.integration

CHECKOUT = Path(__file__).resolve().parents[2]
# What `pip install <checkout>` needs: the build configuration and the packages
# named in pyproject.toml. Copying only these (not tests/, bench/, .git, ...)
# keeps the copy small and independent of unrelated files being edited.
_SOURCE_ENTRIES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "devpitx", "twisted")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")


def copy_source_tree(dest: Path) -> None:
    dest.mkdir()
    for name in _SOURCE_ENTRIES:
        src = CHECKOUT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=_IGNORE)
        elif src.is_file():
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory: pytest.TempPathFactory, clients: Clients) -> Path:
    """A fresh venv with devpitx installed from a copy of the checkout; returns its python."""
    base = tmp_path_factory.mktemp("plugin")
    source = base / "source"
    copy_source_tree(source)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )
    outer_site_packages = sysconfig.get_paths()["purelib"]
    (site_packages / "_devpitx_test_outer_venv.pth").write_text(outer_site_packages + "\n")
    clients.run(
        [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", str(source)],
        cwd=base,
    )
    return python


def test_package_and_plugin_come_from_the_installed_copy(installed_venv: Path, clients: Clients) -> None:
    result = clients.run(
        [installed_venv, "-c",
         "import sys, devpitx, twisted.plugins.devpitx_plugin as p; print(devpitx.__file__); print(p.__file__);"
         "print(sys.prefix)"],
        cwd=installed_venv.parent,
    )
    package_file, plugin_file, prefix = result.stdout.split()
    assert Path(package_file).is_relative_to(prefix), result.stdout
    assert Path(plugin_file).is_relative_to(prefix), result.stdout
    assert not Path(package_file).is_relative_to(CHECKOUT), result.stdout
    # An __init__.py next to our plugin would shadow Twisted's own plugin package.
    assert not (Path(plugin_file).parent / "__init__.py").exists(), "the distribution ships twisted/plugins/__init__.py"


def test_twistd_lists_devpitx(installed_venv: Path, clients: Clients) -> None:
    # twistd has no console script in the fresh venv (Twisted lives in the
    # outer venv), so start it through its module entry point.
    twistd: list[Arg] = [installed_venv, "-c", "from twisted.scripts.twistd import run; run()"]
    listing = clients.run([*twistd, "--help"], cwd=installed_venv.parent)
    commands = listing.stdout.split("Commands:", 1)[1]
    assert any(line.split()[:1] == ["devpitx"] for line in commands.splitlines()), listing.stdout

    help_text = clients.run([*twistd, "devpitx", "--help"], cwd=installed_venv.parent).stdout
    for option in ("--serverdir", "--listen", "--outside-url"):
        assert option in help_text, help_text


def test_python_m_twisted_lists_devpitx(installed_venv: Path, clients: Clients) -> None:
    listing = clients.run([installed_venv, "-m", "twisted", "--help"], cwd=installed_venv.parent)
    assert any(line.split()[:1] == ["devpitx"] for line in listing.stdout.splitlines()), listing.stdout


def test_console_script_is_installed(installed_venv: Path, clients: Clients) -> None:
    script = installed_venv.parent / "devpitx"
    assert script.exists()
    result = clients.run([script, "--version"], cwd=installed_venv.parent)
    assert result.stdout.strip(), result
