"""What several test files share besides fixtures (those are in conftest.py): a job run as a user
runs it, the check that it failed as a user mistake, and the tiny preset on the tiny_shards sets.
Imported as `from tests.helpers import ...` (conftest.py puts the repository root on sys.path)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python <script> ARGS` in a subprocess from the repository root, as a user runs it; `script`
    relative to the root (jobs/train.py); `env`, when given, is the whole environment."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_train(*args, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_script("jobs/train.py", *args, env=env, timeout=timeout)


def exit_code(main, *args) -> int:
    """A job's main(argv) run in this process: the code it returns, or argparse's (--help, usage)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def one_line_error(code: int, err: str, *words: str, expected: int = 2) -> str:
    """That a command failed as a user mistake: exit code `expected`, and its stderr `err` is one
    `error: ` line, no traceback, holding every one of `words`. Returns the line."""
    lines = err.strip().splitlines()
    assert code == expected, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], err
    return lines[0]


def tiny_data(shards: Path, held_out: bool = True) -> list[str]:
    """Overrides that point the tiny preset at the tiny_shards fixture's sets: its train set, and its
    eval set unless `held_out` is false (then none)."""
    return [f"data.train={shards / 'train'}", f"data.eval={shards / 'eval' if held_out else ''}",
            "data.synthetic=false"]
