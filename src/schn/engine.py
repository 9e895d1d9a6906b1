"""The one training engine: every method runs through this loop.

Outer iteration t (of T): draw the sampled set Omega, run E epochs of mini-batch steps on it
(the method's ``training_step``), then the method's ``end_iteration`` (SCHN: the discrete code
update). Model selection is on the validation split carved from the training pool, or the last
iteration; the authors' selection on the query set is reachable only by name (``select=test``).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from tqdm import tqdm

from . import distributed
from . import resume as resume_mod
from .config import Config
from .errors import SchnError
from .evaluate import encode_view, validation_map
from .precision import Precision


class SampleSchedule:
    """Draws Omega each outer iteration.

    ``cover_all``: walk through a fresh random permutation of the pool, m items at a time, so
    every item is sampled (the default here). Otherwise m items uniformly at random each time
    (the authors' code; items never drawn keep their initial code).
    """

    def __init__(self, n: int, m: int, cover_all: bool, rng: np.random.Generator):
        self.n, self.m, self.cover_all, self.rng = n, min(m, n), cover_all, rng
        self._queue = np.zeros(0, dtype=np.int64)
        self.sampled = np.zeros(n, dtype=bool)

    def draw(self) -> np.ndarray:
        if not self.cover_all:
            sample = self.rng.choice(self.n, self.m, replace=False)
        else:
            while len(self._queue) < self.m:
                self._queue = np.concatenate([self._queue, self.rng.permutation(self.n)])
            sample, self._queue = self._queue[: self.m], self._queue[self.m:]
            # a permutation boundary may repeat an item inside one draw; keep Omega a set
            sample = np.unique(sample)
        self.sampled[sample] = True
        return np.sort(sample)


class GlobalBatches:
    """Batches of train-pool positions: the current sampled set ``sample`` shuffled by
    ``generator`` into global batches (one process: exactly ``DataLoader(shuffle=True)``'s), of
    which this process takes its slice: contiguous, sizes differing by at most one. A last batch
    smaller than the number of processes is skipped, as a slice may not be empty."""

    def __init__(self, batch_size: int, generator: torch.Generator, here: distributed.World):
        self.batch_size, self.generator, self.here = batch_size, generator, here
        self.sample = np.zeros(0, dtype=np.int64)

    def __iter__(self):
        order = BatchSampler(RandomSampler(range(len(self.sample)), generator=self.generator), self.batch_size, False)
        for batch in order:
            batch = self.sample[batch]
            if self.here.size == 1:
                yield batch.tolist()
            elif len(batch) >= self.here.size:
                yield np.array_split(batch, self.here.size)[self.here.rank].tolist()

    def __len__(self) -> int:
        return -(-len(self.sample) // self.batch_size)


@dataclass
class TrainResult:
    seconds: float = 0.0
    images: int = 0
    model_selection: str = "last"  # what selected the iteration: "val", "last" or "test"
    selected_iteration: int = 0
    best_val_map: float | None = None
    filled_unsampled: int = 0
    iterations: int = 0  # outer iterations run (fewer than configured when the time budget ends them)
    stopped_by_time_budget: bool = False
    stopped_early: bool = False  # validation mAP stopped improving (train.early_stopping)
    val_seconds: float = 0.0  # spent validating (not counted in ``seconds``)
    final_fit: dict | None = None  # train.final_fit_epochs: its epochs, seconds, validation mAP, kept
    history: list[dict] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_method(cfg: Config, method, inputs, split, labels: np.ndarray, device,
                 log=None, progress: bool = True, state_file: Path | None = None,
                 on_validation=None) -> TrainResult:
    """Run the outer loop; leaves ``method`` at the selected iteration. ``log(record)`` per iteration.

    ``on_validation(iteration, score)`` after each validation (``schn tune`` reports it to Optuna's
    pruner, which may stop the run by raising).

    ``state_file``: after every outer iteration, everything the loop needs to go on (models,
    optimisers, database codes, the sampler's position, every RNG state, the results so far) is
    written there atomically; if the file exists when training starts, the loop resumes from it
    and ends as the uninterrupted run would have (bit-identical on CPU in one process)."""
    tc = cfg.train
    if tc.final_fit_epochs and method.database_codes() is None:
        raise SchnError(f"train.final_fit_epochs fits the image network to learned database codes, which "
                        f"{cfg.method_name} has none of; use it with an asymmetric method (schn, adsh) or set it to 0")
    method.precision = Precision(tc.precision, device)
    rng = np.random.default_rng(cfg.run.seed)
    loader_gen = torch.Generator().manual_seed(cfg.run.seed)
    n_train = len(split.train)
    schedule = SampleSchedule(n_train, tc.num_samples, tc.cover_all, rng)
    train_view = inputs.view(split.train, train=True)
    select = tc.select if (tc.select != "val" or len(split.val)) else "last"
    steps_per_epoch = math.ceil(schedule.m / tc.batch_size)
    total = tc.iterations * tc.epochs_per_iteration * steps_per_epoch
    here = distributed.world()
    bar = tqdm(total=None if tc.time_budget else total, disable=not progress or not here.is_main,
               desc=f"train {cfg.method_name} {tc.bits} bits", unit="step", dynamic_ncols=True)
    result = TrainResult(model_selection=select)
    best_state, best_score = None, -math.inf
    val_pool = validation_pool(split.train, tc.val_pool_size, cfg.run.seed)
    # One loader for the whole run, so that worker processes (num_workers > 0) decode and augment
    # beside training and persist across epochs and iterations; the batches follow the current
    # sampled set. Every process draws the same shuffled global batches and loads its slice.
    batches = GlobalBatches(tc.batch_size, loader_gen, here)
    loader = DataLoader(train_view, batch_sampler=batches, generator=loader_gen, num_workers=tc.num_workers,
                        persistent_workers=tc.num_workers > 0, pin_memory=torch.device(device).type == "cuda")
    start = 0
    if state_file is not None and Path(state_file).is_file():
        start, best_state, best_score = resume_mod.restore(state_file, method, schedule, rng, loader_gen, result)
        bar.update(start * tc.epochs_per_iteration * steps_per_epoch)
    try:
        for it in range(start, tc.iterations):
            if result.stopped_by_time_budget or result.stopped_early:
                break
            t0 = time.perf_counter()
            sample = schedule.draw()
            method.train()
            method.begin_iteration(it, sample)
            sums: dict[str, float] = {}
            steps = images = 0
            batches.sample = sample
            for epoch in range(tc.epochs_per_iteration):
                for x, y, pos in loader:
                    terms = method.training_step(x.to(device), y.to(device), pos.to(device),
                                                 record=epoch == tc.epochs_per_iteration - 1)
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    steps += 1
                    images += len(pos)
                    bar.update(1)
                    if tc.time_budget is not None and result.seconds + time.perf_counter() - t0 > tc.time_budget:
                        # budget spent: close this iteration (its update, its validation) and stop
                        result.stopped_by_time_budget = True
                        break
                if result.stopped_by_time_budget:
                    break
            record = {"iteration": it + 1, **{k: v / max(steps, 1) for k, v in sums.items()}}
            record.update(method.end_iteration())
            codes = method.database_codes() if distributed.active() else None
            if codes is not None:  # the update ran on the same records everywhere
                distributed.check_same(codes, "the database codes after the discrete update")
            images = distributed.total(images)
            train_seconds = time.perf_counter() - t0
            result.seconds += train_seconds
            result.images += images
            result.iterations = it + 1
            due = (it + 1) % tc.val_every == 0 or it + 1 == tc.iterations
            if select in ("val", "test") and due and here.is_main:  # only the first process selects and writes
                v0 = time.perf_counter()
                score = validation_map(method, inputs, split, labels, cfg.eval, device,
                                       tc.encode_batch_size, on=select, pool=val_pool if select == "val" else None)
                record["val_map" if select == "val" else "query_map_for_selection"] = score
                if score > best_score:
                    best_score, result.selected_iteration = score, it + 1
                    best_state = copy.deepcopy(method.state_dict())
                result.val_seconds += time.perf_counter() - v0
                result.stopped_early = converged(tc.early_stopping, it + 1, result.selected_iteration)
                if on_validation is not None:
                    on_validation(it + 1, score)
            if distributed.active():  # every process stops at the same iteration
                result.stopped_early = distributed.broadcast(result.stopped_early)
            record["seconds"] = round(train_seconds, 3)
            record["images_per_second"] = round(images / train_seconds, 1) if train_seconds else 0.0
            result.history.append(record)
            if state_file is not None and here.is_main:
                resume_mod.capture(state_file, it + 1, method, schedule, rng, loader_gen, result, best_state,
                                   best_score)
            if log is not None and here.is_main:
                log(record)
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("loss", "val_map")})
    finally:
        bar.close()
    if best_state is not None:
        method.load_state_dict(best_state)
        result.best_val_map = best_score
    else:
        result.selected_iteration = result.iterations
    if tc.final_fit_epochs:
        def score():
            return validation_map(method, inputs, split, labels, cfg.eval, device, tc.encode_batch_size, on="val",
                                  pool=val_pool)
        final_fit(method, loader, batches, n_train, tc, device, result, score if select == "val" else None)
    if tc.cover_all and here.is_main and not every_code_learned(result.history[:result.selected_iteration], n_train):
        result.filled_unsampled = fill_unsampled(method, inputs, split, schedule.sampled, device,
                                                 tc.encode_batch_size)
    return result


def final_fit(method, loader, batches, n_train: int, tc, device, result: TrainResult, score=None) -> None:
    """``train.final_fit_epochs`` epochs over the whole pool of ``method.fit_codes_step``: the image
    network fitted to the final database codes, so that new items' codes (the symmetric protocol,
    every item added to an index) agree with them. With ``score`` (validation mAP) the fit is kept
    only if it does not lower the selected iteration's score; the time budget bounds it too."""
    here = distributed.world()
    before = copy.deepcopy(method.state_dict())
    t0, images, out_of_time = time.perf_counter(), 0, False
    batches.sample = np.arange(n_train)
    method.train()
    for _ in range(tc.final_fit_epochs):
        for x, y, pos in loader:
            method.fit_codes_step(x.to(device), y.to(device), pos.to(device))
            images += len(pos)
            out_of_time = tc.time_budget is not None and result.seconds + time.perf_counter() - t0 > tc.time_budget
            if out_of_time:
                break
        if out_of_time:
            break
    seconds = time.perf_counter() - t0
    result.seconds += seconds
    result.images += distributed.total(images)
    record = {"epochs": tc.final_fit_epochs, "seconds": round(seconds, 3), "stopped_by_time_budget": out_of_time,
              "val_map": None, "kept": True}
    if score is not None and here.is_main:
        v0 = time.perf_counter()
        record["val_map"] = value = score()
        result.val_seconds += time.perf_counter() - v0
        record["kept"] = result.best_val_map is None or value >= result.best_val_map
    if distributed.active():
        record["kept"] = distributed.broadcast(record["kept"])
    if not record["kept"]:
        method.load_state_dict(before)
    result.final_fit = record


def converged(patience: int | None, iteration: int, best_iteration: int) -> bool:
    """Early stopping: ``patience`` outer iterations have passed since the best validation mAP."""
    return patience is not None and best_iteration > 0 and iteration - best_iteration >= patience


def validation_pool(train: np.ndarray, size: int | None, seed: int) -> np.ndarray | None:
    """The training-pool items validation retrieves from: all (None), or a seeded subset, so a
    symmetric method on images need not encode the whole pool at every validation."""
    if size is None or size >= len(train):
        return None
    rng = np.random.default_rng([seed, 1])  # its own stream: the training draws stay unchanged
    return np.sort(rng.choice(np.asarray(train), size, replace=False))


def every_code_learned(history: list[dict], n_train: int) -> bool:
    """Whether a discrete update in ``history`` (the iterations up to the selected one) wrote every
    database code: ADSH's update and schn-plus's (``update_scope=database``) do, reporting
    ``codes_updated`` = the pool. Then an item never sampled holds a code learned from its labels'
    similarities to the sampled set, as ADSH defines the database codes, and the network's code
    must not replace it (only method.md's update, of the sampled set alone, leaves initial codes)."""
    return any(record.get("codes_updated", 0) >= n_train for record in history)


def fill_unsampled(method, inputs, split, sampled: np.ndarray, device, batch_size: int) -> int:
    """Encode training items the loop never sampled with the image network (method.md default).

    (With ``cover_all=False`` the authors keep the initial code instead; the caller skips this.)
    """
    if method.database_codes() is None or sampled.all():
        return 0
    positions = np.flatnonzero(~sampled)
    codes = encode_view(method, inputs.view(np.asarray(split.train)[positions], train=False), device, batch_size)
    method.set_database_codes(torch.as_tensor(positions), torch.as_tensor(codes))
    return len(positions)
