"""What an interrupted training run needs to go on exactly where it stopped.

After every outer iteration the engine writes ``RUN/resume.pt`` (atomically: a kill mid-write
leaves the previous one): the method's state (networks and learned database codes), its
optimisers, the sampled-set schedule (its queue and which items were drawn), the generators of
the schedule and the data loader, torch's, NumPy's and Python's global RNG states (dropout and
every generator seeded from them), and the results so far (history, timing, the best
validation state). ``schn train --resume RUN`` rebuilds the method from the run's saved config
and split, loads this, and runs the remaining iterations.
"""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch

from .fileio import atomic_path, read_torch

FORMAT = "schn-resume-1"
STATE_FILE = "resume.pt"


def capture(path, iterations_done: int, method, schedule, rng, loader_gen, result, best_state, best_score) -> None:
    state = {
        "format": FORMAT, "iterations_done": iterations_done,
        "method": method.state_dict(), "optimizers": method.optimizer_states(),
        "precision": method.precision.state_dict(),
        "schedule": {"queue": schedule._queue.copy(), "sampled": schedule.sampled.copy()},
        "rng": rng.bit_generator.state, "loader_gen": loader_gen.get_state(),
        "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "result": dataclasses.asdict(result), "best_state": best_state, "best_score": best_score,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def restore(path, method, schedule, rng, loader_gen, result) -> tuple[int, dict | None, float]:
    """Load ``path`` into the loop's objects; returns (iterations done, best state, best score)."""
    state = read_torch(path, FORMAT, "resume state", "train the run again")
    method.load_state_dict(state["method"])
    method.load_optimizer_states(state["optimizers"])
    method.precision.load_state_dict(state["precision"])
    schedule._queue, schedule.sampled = state["schedule"]["queue"], state["schedule"]["sampled"]
    rng.bit_generator.state = state["rng"]
    loader_gen.set_state(state["loader_gen"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    for name, value in state["result"].items():
        setattr(result, name, value)
    return state["iterations_done"], state["best_state"], state["best_score"]
