"""Benchmarks refuse a misspelt choice instead of printing an empty report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_crypto_only_refuses_an_unknown_operation() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "crypto.py"), "--only", "secp256k1_sign"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert "argument --only: invalid choice: 'secp256k1_sign'" in done.stderr
    assert "secp256k1.sign" in done.stderr  # the names it takes
