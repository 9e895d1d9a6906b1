"""Encoding items with a trained method and scoring retrieval by the field's protocol.

Two evaluations are reported for asymmetric methods:
- *asymmetric* (the paper's protocol): query codes from the image network against the learned
  database codes ``B`` (items of the database that were never in the training pool, e.g. the
  validation items, are encoded by the network, as anything added later would be);
- *symmetric*: every database item encoded by the image network, as a service indexing new
  images sees it.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .codes import to_signed
from .metrics import EvalConfig, evaluate_retrieval


def binarize(method, real: torch.Tensor) -> torch.Tensor:
    """The method's sign convention (SCHN keeps the authors' sign(0)=0 reachable)."""
    fn = getattr(method, "binarize", None)
    return fn(real) if fn is not None else to_signed(real)


@torch.no_grad()
def encode_view(method, view, device, batch_size: int = 256, num_workers: int = 0,
                progress: bool = False, desc: str = "encode", backbone=None, with_labels: bool = False):
    """Binary codes (float32 +-1, or 0 under sign(0)=0) of every item of ``view``, in order;
    with ``with_labels``, also the items' second fields stacked (codes, labels)."""
    method.eval()
    loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    chunks, labels = [], []
    for inputs, label, _ in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        inputs = inputs.to(device)
        if backbone is not None:
            inputs = backbone(inputs)
        chunks.append(binarize(method, method.encode(inputs)).float().cpu())
        labels.append(label)
    codes = torch.cat(chunks).numpy() if chunks else np.zeros((0, method.bits), dtype=np.float32)
    if with_labels:
        return codes, (torch.cat(labels).numpy() if labels else np.zeros((0, 1), dtype=np.float32))
    return codes


def database_codes(method, inputs, indices, train_indices, device, batch_size: int, progress: bool = False,
                   symmetric: bool = False) -> np.ndarray:
    """Codes of data set ``indices`` in their order: the learned codes for items of the training
    pool ``train_indices``, unless ``symmetric`` or the method learns none; the image network
    for the rest."""
    indices = np.asarray(indices)
    learned = None if symmetric else method.database_codes()
    codes = np.zeros((len(indices), method.bits), dtype=np.float32)
    if learned is not None:
        learned = learned.detach().float().cpu().numpy()
        pos_in_train = {int(g): p for p, g in enumerate(train_indices)}
        rows = np.array([pos_in_train.get(int(g), -1) for g in indices], dtype=np.int64)
        have = rows >= 0
        codes[have] = learned[rows[have]]
        missing = np.flatnonzero(~have)
    else:
        missing = np.arange(len(indices))
    if len(missing):
        view = inputs.view(indices[missing], train=False)
        codes[missing] = encode_view(method, view, device, batch_size, progress=progress,
                                     desc="encode database")
    return codes


def evaluate_method(method, inputs, split, labels: np.ndarray, eval_cfg: EvalConfig, device,
                    batch_size: int = 256, progress: bool = False) -> dict:
    """Scores of the query split against the database: ``{"asymmetric": ..., "symmetric": ...}``.

    Each entry is the dict of :func:`schn.metrics.evaluate_retrieval`; also returns the codes
    under ``"codes"`` for saving and plotting.
    """
    start = time.perf_counter()
    query = encode_view(method, inputs.view(split.query, train=False), device, batch_size,
                        progress=progress, desc="encode queries")
    seconds = time.perf_counter() - start
    q_labels, d_labels = labels[split.query], labels[split.database]
    kwargs = dict(depth=eval_cfg.map_depth, radius=eval_cfg.radius, ns=tuple(eval_cfg.precision_at),
                  drop_last=eval_cfg.drop_last, ties=eval_cfg.ties,
                  ndcg_k=eval_cfg.ndcg_depth(bool((labels.sum(axis=1) > 1).any())))
    out = {"codes": {"query": query}}
    db = database_codes(method, inputs, split.database, split.train, device, batch_size, progress)
    out["asymmetric"] = evaluate_retrieval(query, db, q_labels, d_labels, **kwargs)
    # items/s of the model inputs (images, or cached features in frozen mode), incl. loading
    out["asymmetric"]["encode_items_per_second"] = round(len(query) / seconds, 1) if seconds > 0 else 0.0
    out["codes"]["database"] = db
    if eval_cfg.symmetric and method.database_codes() is not None:
        db_sym = database_codes(method, inputs, split.database, split.train, device, batch_size, progress,
                                symmetric=True)
        out["symmetric"] = evaluate_retrieval(query, db_sym, q_labels, d_labels, **kwargs)
    return out


def validation_map(method, inputs, split, labels: np.ndarray, eval_cfg: EvalConfig, device,
                   batch_size: int = 256, on: str = "val", pool=None, symmetric: bool = False) -> float:
    """mAP used for model selection: validation items (or, only for the authors' ``select=test``
    reproduction, the queries) against the training pool's codes (or those of ``pool``, a subset
    of it), at the protocol's depth. ``symmetric``: the pool encoded by the network, as new
    items are, instead of a method's learned codes."""
    from .metrics import mean_average_precision

    queries = split.val if on == "val" else split.query
    q = encode_view(method, inputs.view(queries, train=False), device, batch_size)
    if pool is None:
        pool = split.train if on == "val" else split.database
    if symmetric:
        db = encode_view(method, inputs.view(pool, train=False), device, batch_size)
    else:
        db = database_codes(method, inputs, pool, split.train, device, batch_size)
    # as many threads as training may use (torch's setting, OMP_NUM_THREADS): one in a benchmark lane
    return float(mean_average_precision(q, db, labels[queries], labels[pool], depth=eval_cfg.map_depth,
                                        drop_last=eval_cfg.drop_last, ties=eval_cfg.ties,
                                        threads=torch.get_num_threads()))
