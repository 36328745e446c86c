"""The layering (README: Development) holds: import-linter's contracts in pyproject.toml pass on the
real tree, and the same contracts break on a tree with an upward import and an import circle."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)


def test_the_layering_contracts_hold() -> None:
    res = lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout
    for name in ("Layers point one way", "never on the Memory facade", "No import circles"):
        assert name in res.stdout


def test_the_contracts_catch_an_upward_import_and_a_circle(tmp_path: Path) -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    kinds = {c["type"] for c in config["contracts"]}
    assert {"layers", "acyclic_siblings", "forbidden"} <= kinds
    files = {
        "store/__init__.py": "", "store/db.py": "import memory.facade\n",  # the store imports upward
        "memory/__init__.py": "", "memory/facade.py": "", "memory/a.py": "from memory import b\n",
        "memory/b.py": "from memory import a\n",  # a circle
        "agent/__init__.py": "", "qrmem/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    contracts = [c for c in config["contracts"] if c["type"] in ("layers", "acyclic_siblings")]
    lines = [f"[tool.importlinter]\nroot_packages = {config['root_packages']!r}\n"]
    for c in contracts:
        lines.append("[[tool.importlinter.contracts]]\n" + "".join(
            f"{k} = {v!r}\n".replace("'", '"') for k, v in c.items()))
    (tmp_path / "pyproject.toml").write_text("\n".join(lines))
    res = lint(tmp_path)
    assert res.returncode == 1, res.stdout
    assert "store.db -> memory.facade" in res.stdout
    assert "2 broken" in res.stdout
