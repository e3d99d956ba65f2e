"""The package ships py.typed: its annotations must type-check."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_package_type_checks():
    proc = subprocess.run([sys.executable, "-m", "mypy", "llamatelemetry", "--ignore-missing-imports"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
