import numpy as np

from schn.engine import SampleSchedule


def test_cover_all_samples_every_item_within_ceil_n_over_m_draws():
    sched = SampleSchedule(n=103, m=20, cover_all=True, rng=np.random.default_rng(0))
    seen = np.zeros(103, bool)
    for _ in range(6):  # ceil(103 / 20) = 6
        sample = sched.draw()
        assert len(np.unique(sample)) == len(sample) <= 20
        seen[sample] = True
    assert seen.all() and sched.sampled.all()


def test_random_sampling_is_seeded_and_sized():
    a = SampleSchedule(50, 10, False, np.random.default_rng(3))
    b = SampleSchedule(50, 10, False, np.random.default_rng(3))
    for _ in range(3):
        x, y = a.draw(), b.draw()
        assert (x == y).all() and len(np.unique(x)) == 10


def test_m_larger_than_pool_takes_the_whole_pool():
    sched = SampleSchedule(7, 100, True, np.random.default_rng(0))
    assert sched.draw().tolist() == list(range(7))


def test_validation_pool_is_a_seeded_subset_or_everything():
    from schn.engine import validation_pool

    train = np.arange(100, 200)
    assert validation_pool(train, None, 0) is None and validation_pool(train, 100, 0) is None
    a, b = validation_pool(train, 30, 7), validation_pool(train, 30, 7)
    assert (a == b).all() and len(np.unique(a)) == 30 and set(a) <= set(train)
    assert (np.diff(a) > 0).all()
    assert not np.array_equal(a, validation_pool(train, 30, 8))


def test_converged_counts_outer_iterations_since_the_best():
    from schn.engine import converged

    assert not converged(None, 50, 1)
    assert not converged(3, 3, 0)  # nothing validated yet
    assert not converged(3, 4, 2) and converged(3, 5, 2) and converged(1, 2, 1)


def test_early_stopping_ends_a_run_whose_validation_map_stopped_improving(tmp_path):
    """With a learning rate too small to learn (only batch-norm statistics move), validation mAP
    soon stops improving: patience 2 ends the run two iterations after its best, well before the
    cap of 20, and the best iteration is the one selected."""
    import json
    from pathlib import Path

    import yaml

    from schn.config import load_config
    from schn.runs import train_run

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "digits.yaml").read_text())
    raw["method"] = {"name": "dpsh", "lr": 1e-12}
    config = tmp_path / "digits-dpsh.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = load_config(config, ["train.iterations=20",
                               "train.epochs_per_iteration=1", "train.early_stopping=2", "train.bits=16",
                               f"run.out_dir={tmp_path}", "run.name=es"])
    run_dir, metrics = train_run(cfg, progress=False, echo=lambda s: None)
    best = metrics["selected_iteration"]
    assert metrics["stopped_early"] is True and metrics["iterations_run"] == best + 2 < 20
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == list(range(1, best + 3))
    scores = [r["val_map"] for r in log]
    assert max(scores) == scores[best - 1] == metrics["best_val_map"] and max(scores[best:]) <= scores[best - 1]


def _digits_cfg(tmp_path, method, *sets):
    from pathlib import Path

    import yaml

    from schn.config import load_config

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "digits.yaml").read_text())
    raw["method"] = method
    config = tmp_path / "digits.yaml"
    config.write_text(yaml.safe_dump(raw))
    return load_config(config, ["train.iterations=2", "train.epochs_per_iteration=1", "train.bits=16",
                                "model.backbone=pixels", f"run.out_dir={tmp_path}", *sets])


def _trained(cfg):
    from schn.engine import seed_everything, train_method
    from schn.runs import prepare_run

    seed_everything(cfg.run.seed)
    run = prepare_run(cfg, progress=False)
    return run.method, train_method(cfg, run.method, run.inputs, run.split, run.labels, run.device, progress=False)


def test_final_fit_trains_the_image_net_against_fixed_codes_and_is_kept_only_if_validation_holds(tmp_path):
    import torch

    for name in ("schn", "adsh"):
        method, result = _trained(_digits_cfg(tmp_path, {"name": name, "lr": 0.01}, "train.final_fit_epochs=2"))
        fit = result.final_fit
        assert fit["epochs"] == 2 and fit["val_map"] is not None
        assert fit["kept"] == (fit["val_map"] >= result.best_val_map)
        # the same run without the fit: the same learned codes; a kept fit moved the image net
        plain, unfitted = _trained(_digits_cfg(tmp_path, {"name": name, "lr": 0.01}))
        assert unfitted.final_fit is None and unfitted.best_val_map == result.best_val_map
        assert torch.equal(plain.database_codes(), method.database_codes())
        moved = any(not torch.equal(a, b) for a, b in zip(plain.image_net.parameters(), method.image_net.parameters()))
        assert moved == fit["kept"], name


def test_final_fit_needs_learned_codes(tmp_path):
    import pytest

    from schn.engine import train_method
    from schn.errors import SchnError
    from schn.runs import prepare_run

    cfg = _digits_cfg(tmp_path, {"name": "dpsh"}, "train.final_fit_epochs=1")
    run = prepare_run(cfg, progress=False)
    with pytest.raises(SchnError, match="final_fit_epochs"):
        train_method(cfg, run.method, run.inputs, run.split, run.labels, run.device, progress=False)


def test_a_final_fit_that_lowers_validation_map_is_undone(tmp_path, monkeypatch):
    import torch

    import schn.engine as engine

    scores = iter([0.5, 0.6, 0.1])  # two outer iterations, then the fit
    monkeypatch.setattr(engine, "validation_map", lambda *a, **k: next(scores))
    method, result = _trained(_digits_cfg(tmp_path, {"name": "schn", "lr": 0.01}, "train.final_fit_epochs=1"))
    assert result.final_fit["val_map"] == 0.1 and result.final_fit["kept"] is False
    scores = iter([0.5, 0.6])
    plain, _ = _trained(_digits_cfg(tmp_path, {"name": "schn", "lr": 0.01}))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), method.state_dict().values()))


def test_symmetric_validation_encodes_the_pool_instead_of_reading_learned_codes(tmp_path):
    from schn.evaluate import validation_map
    from schn.runs import prepare_run

    for name, same in (("dpsh", True), ("schn", False)):
        cfg = _digits_cfg(tmp_path, {"name": name, "lr": 0.01})
        method, result = _trained(cfg)
        run = prepare_run(cfg, progress=False)
        args = (method, run.inputs, run.split, run.labels, cfg.eval, run.device)
        asymmetric, symmetric = validation_map(*args), validation_map(*args, symmetric=True)
        assert asymmetric == result.best_val_map
        assert (asymmetric == symmetric) == same, name


def test_every_code_learned_reads_the_updates_up_to_the_selected_iteration():
    from schn.engine import every_code_learned

    assert not every_code_learned([], 10)
    assert not every_code_learned([{"codes_updated": 4.0}, {"loss": 1.0}], 10)
    assert every_code_learned([{"codes_updated": 4.0}, {"codes_updated": 10.0}], 10)


def test_never_sampled_items_keep_a_whole_database_update_and_get_network_codes_otherwise(tmp_path):
    """ADSH's and schn-plus's updates write every database code (learned from the sampled set's
    similarities), so the codes of items the loop never sampled stay the update's; method.md's
    update writes the sampled set's only, so the others are encoded by the image network."""
    import torch

    from schn.evaluate import encode_view
    from schn.runs import prepare_run

    for method_cfg, fills in (({"name": "adsh"}, False), ({"name": "schn-plus"}, False),
                              ({"name": "schn", "update_scope": "database"}, False), ({"name": "schn"}, True)):
        cfg = _digits_cfg(tmp_path, {**method_cfg, "lr": 0.01}, "train.num_samples=100")
        method, result = _trained(cfg)
        run = prepare_run(cfg, progress=False)
        n_train = len(run.split.train)
        assert n_train > 200  # two draws of 100 leave most of the pool unsampled
        codes = method.database_codes()
        network = torch.as_tensor(encode_view(method, run.inputs.view(run.split.train, train=False), run.device, 256))
        same = (codes == network.to(codes)).all(dim=1)
        if fills:
            assert result.filled_unsampled >= n_train - 200 and int(same.sum()) >= n_train - 200
        else:
            assert result.filled_unsampled == 0 and int(same.sum()) < n_train - 200, method_cfg
