"""The README's two set-up commands are what CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lines .ci/run may add around the README's commands: the test database server, the slow tests.
CI_EXTRAS = {". .ci/postgres", ". .venv/bin/activate && python -m pytest -m slow tests/test_reliability.py"}


def test_ci_runs_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd ", "export "))]
    commands = [line for line in ci if line not in CI_EXTRAS]
    assert len(commands) == 2, commands
    install, tests = commands
    assert ci[0] == install, "CI installs first"
    assert install in readme, "README set-up command 1 must start with .ci/run's install line"
    assert f"```bash\n{tests}\n```" in readme, "README set-up command 2 must be .ci/run's test line"
    assert ci.index(". .ci/postgres") < ci.index(tests), "PostgreSQL runs before the tests"


def _snippets(section: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"## {section}\n")
    end = readme.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", readme[start:end], re.S)


@pytest.mark.parametrize("index", range(3))
def test_the_adapter_snippets_run_as_written(index: int, tmp_path: Path, qr_cache: Path) -> None:
    """Each snippet of "Use with LangChain / LangGraph / mem0" runs offline, as a user would paste it."""
    pytest.importorskip("langchain_classic")
    pytest.importorskip("langmem")
    pytest.importorskip("mem0")
    snippets = _snippets("Use with LangChain / LangGraph / mem0")
    assert len(snippets) == 3
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEM0_TELEMETRY": "False", "QRMEM_CACHE": str(qr_cache)}
    res = subprocess.run([sys.executable, "-c", snippets[index]], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    expected = ["alice: My kitten is called Miso.", "My cat is called Miso", "Alice's cat is called Miso"][index]
    assert expected in res.stdout.splitlines()[0], res.stdout
