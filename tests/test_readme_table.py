"""The README's performance block is what benchmarks/readme_table.py makes from the committed results (issue 24: CI
checks it, so a hand edit or a result file committed without regenerating the README fails here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_performance_block_is_generated_from_the_committed_results():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_table.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"README.md is not up to date: run benchmarks/readme_table.py\n{result.stdout}" \
                                   f"{result.stderr}"


@pytest.mark.parametrize("block", ["performance", "labelled"])
def test_the_check_fails_on_a_hand_edited_block(tmp_path, block):
    text = (ROOT / "README.md").read_text()
    begin = text.index(f"<!-- {block}:begin -->")
    edited = tmp_path / "README.md"
    edited.write_text(text[:begin] + text[begin:].replace("|", "| ", 1))  # one cell of the block touched by hand
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_table.py"), "--check", "--readme",
                             str(edited)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "out of date" in result.stderr


def test_the_check_fails_on_a_hand_edited_table_of_every_fine_tuning_method(tmp_path):
    text = (ROOT / "docs" / "performance.md").read_text()
    begin = text.index("<!-- finetune:begin -->")
    edited = tmp_path / "performance.md"
    edited.write_text(text[:begin] + text[begin:].replace("|", "| ", 1))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_table.py"), "--check",
                             "--performance-doc", str(edited)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "out of date" in result.stderr and "performance.md" in result.stderr
