"""Zero-shot (and few-shot) accuracy through lm-evaluation-harness.

The harness's ``HFLM`` wraps the model that pvq already loaded (a plain model,
or a pvq checkpoint with its quantized modules), so what is scored is exactly
the model that ``pvq eval`` measures for perplexity. Tasks are the harness's
own, plus the ones shipped in :data:`pvq.eval.tasks.TASKS_DIR` (``pvq_heldout``,
offline), found through the harness's include path.

Task names are checked, and their data loaded, before any model is loaded:
an unknown name or unreachable data fails at once with a :class:`ZeroShotError`
that says what to change.
"""

from __future__ import annotations

import difflib
import logging
import os
import time
from pathlib import Path
from typing import Sequence

from ..errors import EvalError
from .tasks import TASKS_DIR

DEFAULT_TASK = "pvq_heldout"
INSTALL_HINT = 'install lm-evaluation-harness with: pip install -e ".[eval]" (or pip install "lm-eval>=0.4.13,<0.5")'


class ZeroShotError(EvalError):
    """Bad zero-shot request: unknown task, unreachable task data, missing harness, bad option."""


def _harness():
    try:
        import lm_eval
    except ImportError as err:
        raise ZeroShotError(f"zero-shot evaluation needs lm-evaluation-harness ({err}); {INSTALL_HINT}") from err
    return lm_eval


def harness_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("lm_eval")
    except Exception:
        return None


def _quiet_harness(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(level)


_MANAGERS: dict[tuple[str, ...], object] = {}


def task_manager(include_path: str | Path | Sequence[str | Path] | None = None):
    """The harness's ``TaskManager`` over its own tasks, pvq's tasks and ``include_path`` (cached)."""
    _harness()
    from lm_eval.tasks import TaskManager

    extra = [] if include_path is None else [include_path] if isinstance(include_path, (str, Path)) else include_path
    paths = [str(TASKS_DIR)]
    for p in extra:
        if not Path(p).is_dir():
            raise ZeroShotError(f"--include-path {str(p)!r} is not a directory of task YAML files")
        paths.append(str(Path(p).resolve()))
    key = tuple(paths)
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=paths)
    return _MANAGERS[key]


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise ZeroShotError("--tasks is empty; give one or more task names, e.g. --tasks pvq_heldout")
    return list(dict.fromkeys(names))


def check_task_names(names: Sequence[str], manager) -> None:
    """Raise :class:`ZeroShotError` for names the harness does not know, with its close names."""
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known and not Path(n).is_file()]
    if not unknown:
        return
    parts = []
    for n in unknown:
        close = difflib.get_close_matches(n, manager.all_tasks, n=5, cutoff=0.6)
        prefix = [t for t in manager.all_tasks if t.startswith(n)][: 5 - len(close)] if len(close) < 5 else []
        close = list(dict.fromkeys(close + prefix))
        parts.append(f"{n!r} (close names: {', '.join(close)})" if close else f"{n!r} (no close names)")
    raise ZeroShotError(
        f"unknown task {'; '.join(parts)}; lm-evaluation-harness knows {len(known)} tasks, groups and tags "
        "(list them with: lm_eval ls tasks); pass task YAML files of your own with --include-path DIR"
    )


def _dataset_of(manager, name: str) -> str:
    """'path (name)' of a task's dataset as its YAML states it, or '' when not stated."""
    entry = manager.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    path = cfg.get("dataset_path")
    if not path:
        return ""
    return f"{path}" + (f" ({cfg['dataset_name']})" if cfg.get("dataset_name") else "")


def load_tasks(names: Sequence[str], manager) -> list:
    """The harness's Task/Group objects for ``names``, with their data loaded (before any model)."""
    objects = []
    for name in names:
        try:
            loaded = manager.load([name])
        except Exception as err:  # the harness and `datasets` raise many kinds; all mean "data not reachable"
            dataset = _dataset_of(manager, name)
            what = f"dataset {dataset!r}" if dataset else "its dataset"
            first = (str(err).strip().splitlines() or [""])[0][:300]
            offline = any(os.environ.get(v) == "1" for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
            raise ZeroShotError(
                f"task {name!r} could not load {what} ({type(err).__name__}: {first})"
                + ("; HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set" if offline else "")
                + ". Point the harness at local data: fetch it where the hub is reachable "
                f"(python -c \"import datasets; datasets.load_dataset({dataset.split(' (')[0]!r}"
                + (f", {dataset.split(' (')[1][:-1]!r}" if " (" in dataset else "")
                + ")\") and copy the datasets cache here (HF_DATASETS_CACHE, run with HF_DATASETS_OFFLINE=1), "
                "or write a task YAML with dataset_path: json and dataset_kwargs: {data_files: ...} in a "
                "directory and pass it with --include-path DIR"
            ) from err
        if name in loaded["groups"]:
            objects.append(loaded["groups"][name])
        else:
            objects.extend(loaded["tasks"].values())
    return objects


def prepare_tasks(tasks: str | Sequence[str], include_path=None, verbose: bool = False) -> tuple[list[str], object, list]:
    """(names, task manager, task objects): everything checked and loaded before a model is."""
    _quiet_harness(verbose)
    names = parse_tasks(tasks)
    manager = task_manager(include_path)
    check_task_names(names, manager)
    return names, manager, load_tasks(names, manager)


def check_options(limit: int | float | None, num_fewshot: int | None, batch_size: int) -> None:
    if limit is not None and not (limit > 0):
        raise ZeroShotError(f"--limit must be positive (items per task, or a fraction below 1), got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ZeroShotError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    if batch_size < 1:
        raise ZeroShotError(f"--batch-size must be at least 1, got {batch_size}")


def _metrics(entry: dict) -> dict:
    """{'acc': .., 'acc_stderr': .., 'acc_norm': .., ...} from one harness result row ('metric,filter' keys)."""
    out = {}
    for key, value in entry.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        if isinstance(value, (int, float)):
            name = metric if filt == "none" else f"{metric}[{filt}]"
            out[name] = float(value)
        elif value == "N/A":
            out[metric if filt == "none" else f"{metric}[{filt}]"] = None
    return out


def evaluate_zeroshot(
    model,
    tokenizer,
    tasks: str | Sequence[str] | list = DEFAULT_TASK,
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    include_path=None,
    seed: int = 0,
    verbose: bool = False,
    prepared: tuple | None = None,
) -> dict:
    """Score ``model`` on harness tasks; returns ``{"tasks": {name: metrics}, ...}``.

    ``prepared``: the result of :func:`prepare_tasks` (to check names and load data before loading the model).
    Metrics are the harness's: ``acc`` and its ``acc_stderr``, ``acc_norm`` where the task defines it, ...
    """
    check_options(limit, num_fewshot, batch_size)
    names, manager, objects = prepared if prepared is not None else prepare_tasks(tasks, include_path, verbose)
    lm_eval = _harness()
    from lm_eval.models.huggingface import HFLM

    _quiet_harness(verbose)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    t = time.perf_counter()
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=objects,
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    seconds = time.perf_counter() - t
    n_samples = res.get("n-samples", {})
    configs = res.get("configs", {})
    out_tasks = {}
    for task, entry in res["results"].items():
        row = _metrics(entry)
        if task in n_samples:
            row["items"] = int(n_samples[task].get("effective", 0))
        if task in configs:
            row["num_fewshot"] = configs[task].get("num_fewshot")
        out_tasks[task] = row
    return {
        "tasks": out_tasks,
        "requested": list(names),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "seconds": seconds,
        "harness": f"lm-eval {harness_version()}",
    }


def format_zeroshot(zs: dict) -> list[str]:
    """Human lines: one per task, accuracy (and normalized accuracy) with the harness's standard errors."""
    lines = []
    for task, m in zs["tasks"].items():
        parts = []
        for metric in ("acc", "acc_norm"):
            if m.get(metric) is not None:
                se = m.get(f"{metric}_stderr")
                parts.append(f"{metric} {m[metric]:.4f}" + (f" ± {se:.4f}" if se is not None else ""))
        if not parts:  # a task with other metrics (exact_match, ...)
            parts = [f"{k} {v:.4f}" for k, v in m.items()
                     if isinstance(v, float) and not k.endswith("_stderr") and k not in ("items", "num_fewshot")]
        extra = []
        if m.get("items"):
            extra.append(f"{m['items']} items")
        if m.get("num_fewshot") is not None:
            extra.append(f"{m['num_fewshot']}-shot")
        lines.append(f"  {task}: {', '.join(parts)}" + (f" ({', '.join(extra)})" if extra else ""))
    return lines


__all__ = [
    "DEFAULT_TASK",
    "TASKS_DIR",
    "ZeroShotError",
    "check_task_names",
    "evaluate_zeroshot",
    "format_zeroshot",
    "load_tasks",
    "prepare_tasks",
    "task_manager",
]
