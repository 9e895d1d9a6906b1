"""Training under torchrun: 2 processes (gloo, CPU) against 1 with the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import DIGITS, free_port, train_in_one_and_two_processes

from schn import distributed
from schn.engine import GlobalBatches

# pixels into a linear hash layer: no batch norm, whose per-process statistics are the one thing
# 2 CPU processes cannot share (SyncBatchNorm is CUDA-only), so the runs must agree closely
SETTINGS = ["--set", "train.iterations=3", "--set", "train.bits=16", "--set", "train.epochs_per_iteration=1",
            "--set", "model.backbone=pixels", "--set", "method.variant=tomm"]


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path):
    done = train_in_one_and_two_processes(tmp_path, SETTINGS)
    assert done.stdout.count("mAP@all") == 2  # one report (asymmetric + symmetric lines), by the first process
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # one run folder, written once
    one, two = tmp_path / "one", tmp_path / "two"
    assert len((two / "log.jsonl").read_text().splitlines()) == 3
    with np.load(one / "codes.npz") as a, np.load(two / "codes.npz") as b:
        for key in ("database_codes", "query_codes"):
            same = (np.unpackbits(a[key], axis=1) == np.unpackbits(b[key], axis=1)).mean()
            assert same >= 0.995, (key, same)  # measured: 0.9995 and 0.9997 (float summation order)
    m1, m2 = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert m2["processes"] == 2 and abs(m1["map"] - m2["map"]) < 0.005  # measured: 0.7518 and 0.7517


def test_two_nodes_on_loopback_train_as_one_process_per_node(tmp_path):
    """Multi-node torchrun: two launchers (node ranks 0 and 1) meeting at 127.0.0.1."""
    port = free_port()
    torchrun = Path(sys.executable).parent / "torchrun"
    nodes = [subprocess.Popen([str(torchrun), "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "schn", "train",
                               "--config", DIGITS, *SETTINGS, "--set", f"run.out_dir={tmp_path}",
                               "--set", "run.name=nodes", "--quiet"],
                              # one thread each, as torchrun sets for several processes per node; two
                              # processes of 2 threads on 2 cores ran 5x slower
                              env={**os.environ, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert "mAP@all" in outputs[0][0] and "mAP@all" not in outputs[1][0]  # the first process reports
    assert json.loads((tmp_path / "nodes" / "metrics.json").read_text())["processes"] == 2


def test_global_batches_are_shared_and_sliced():
    def batches(rank, size):
        sampler = GlobalBatches(4, torch.Generator().manual_seed(0), distributed.World(rank, size))
        sampler.sample = np.arange(100, 110)
        return list(sampler)

    whole = batches(0, 1)
    assert [len(b) for b in whole] == [4, 4, 2] and sorted(sum(whole, [])) == list(range(100, 110))
    parts = [batches(rank, 3) for rank in range(3)]
    for i in range(2):  # each global batch split in order; the last (2 < 3 items) is skipped
        assert sum((part[i] for part in parts), []) == whole[i]
    assert all(len(part) == 2 for part in parts)


def _gradients_on_two_processes(rank, folder, out):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    x = torch.randn(7, 5)
    mine = x[:4] if rank == 0 else x[4:]  # slices of different sizes, as the last batch may have
    wrapped = torch.nn.parallel.DistributedDataParallel(net)
    U = distributed.gather_rows(wrapped(mine), grad_scale=True)
    B = torch.sign(torch.randn(7, 3, generator=torch.Generator().manual_seed(1)))
    loss = ((U @ B.T - 3 * torch.eye(7)) ** 2).mean()  # pairs across the whole batch
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": net.weight.grad, "U": U.detach()}, f"{out}-{rank}.pt")
    dist.destroy_process_group()


def test_gathered_rows_give_the_whole_batch_gradient(tmp_path):
    mp.spawn(_gradients_on_two_processes, args=(str(tmp_path), str(tmp_path / "out")), nprocs=2)
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    x = torch.randn(7, 5)
    B = torch.sign(torch.randn(7, 3, generator=torch.Generator().manual_seed(1)))
    loss = ((net(x) @ B.T - 3 * torch.eye(7)) ** 2).mean()
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"out-{rank}.pt")
        assert torch.allclose(got["U"], net(x).detach(), atol=1e-6)
        assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
        assert torch.allclose(got["grad"], net.weight.grad, atol=1e-6), rank


def test_one_process_is_untouched():
    t = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_rows(t, grad_scale=True) is t and not distributed.active()
    assert distributed.total(5) == 5 and distributed.broadcast("x") == "x"


def test_world_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    here = distributed.world()
    assert (here.rank, here.size, here.is_main) == (1, 4, False)
