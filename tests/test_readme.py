"""The README's two set-up commands are what CI runs."""

from __future__ import annotations

from pathlib import Path

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
