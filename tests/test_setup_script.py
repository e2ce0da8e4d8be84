"""``scripts/install.sh`` chooses a Python that can install linkpulse, or says which one it needs.

Bytewax 0.21 has wheels only up to CPython 3.12, so with a 3.13 the script
must stop at once with a message naming the versions and how to get one,
instead of pip's "No matching distribution found for bytewax". These run the
real script with real interpreters (pyenv's 3.13 on this machine kind) and a
PATH that holds only what the test puts there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY313 = Path.home() / ".pyenv" / "versions" / "3.13.0" / "bin" / "python3.13"


def _python313() -> Path:
    # The interpreter itself, not pyenv's shim (a script that needs pyenv on PATH).
    if not PY313.exists():
        pytest.fail(
            f"these tests need a Python 3.13 interpreter at {PY313} "
            "(install one with `pyenv install 3.13.0`)"
        )
    return PY313


def _sandbox(tmp_path: Path, python3: Path | None) -> tuple[Path, dict[str, str]]:
    """A copy of the script in a tree of its own, and a PATH with only bash's tools and python3."""
    tree = tmp_path / "clone"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "install.sh", tree / "scripts" / "install.sh")
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "dirname"):
        found = shutil.which(tool)
        assert found, f"{tool} is not on PATH"
        (bin_dir / tool).symlink_to(found)
    if python3 is not None:
        (bin_dir / "python3").symlink_to(python3)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    return tree, env


def _run(tree: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [env["PATH"] + "/bash", str(tree / "scripts" / "install.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_python_313_as_the_only_python3_stops_with_the_versions_needed(tmp_path: Path) -> None:
    tree, env = _sandbox(tmp_path, _python313())
    result = _run(tree, env)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "needs Python 3.11 or 3.12" in result.stderr
    assert "python3 here is Python 3.13" in result.stderr
    assert "apt install python3.12" in result.stderr  # says how to get one
    assert not (tree / ".venv").exists()  # stopped before creating anything


def test_no_python_at_all_stops_with_the_same_message(tmp_path: Path) -> None:
    tree, env = _sandbox(tmp_path, None)
    result = _run(tree, env)
    assert result.returncode == 3
    assert "needs Python 3.11 or 3.12" in result.stderr


def test_a_named_python_313_is_refused_by_name(tmp_path: Path) -> None:
    tree, env = _sandbox(tmp_path, None)
    env["PYTHON"] = str(_python313())
    result = _run(tree, env)
    assert result.returncode == 3
    assert f"PYTHON={env['PYTHON']} is Python 3.13" in result.stderr


def test_a_venv_made_with_313_is_refused_with_what_to_do(tmp_path: Path) -> None:
    tree, env = _sandbox(tmp_path, None)
    subprocess.run(
        [str(_python313()), "-m", "venv", "--without-pip", str(tree / ".venv")],
        check=True,
        env={**os.environ},
        timeout=120,
    )
    result = _run(tree, env)
    assert result.returncode == 3
    assert ".venv has Python 3.13" in result.stderr
    assert "rm -rf .venv" in result.stderr


def test_requires_python_matches_what_the_script_accepts() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11,<3.13"' in text
    assert 'SUPPORTED="3.11 3.12"' in (ROOT / "scripts" / "install.sh").read_text()
