"""The README's two set-up commands are what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd ", "export "))]
    assert len(ci) == 2, ci
    install, tests = ci
    assert install in readme, "README set-up command 1 must start with .ci/run's install line"
    assert f"```bash\n{tests}\n```" in readme, "README set-up command 2 must be .ci/run's test line"
