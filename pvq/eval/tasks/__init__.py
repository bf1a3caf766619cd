"""lm-evaluation-harness tasks shipped with pvq (pass this directory as the harness's include path)."""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

__all__ = ["TASKS_DIR"]
