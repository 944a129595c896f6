"""The stage units and the runner with training and evaluation stubbed out (a tiny MLP, random data, no
epoch run): a finished stage is loaded, not recomputed, and loads the very result it computed; a changed
numbers key is refused, a changed speed-only key resumes; the typed results survive their JSON; the
summary is printed from typed results, also from a summary.json an older version wrote."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import prunelimit.train
from prunelimit.config import load_config
from prunelimit.errors import PrunelimitError
from prunelimit.pipeline import dense as dense_mod, gp as gp_mod, limit as limit_mod
from prunelimit.pipeline.common import Context, Data
from prunelimit.pipeline.dense import dense_model
from prunelimit.pipeline.gp import run_gp
from prunelimit.pipeline.limit import SpectrumStage, run_limit
from prunelimit.pipeline.results import FinetuneResult, LimitResult, PruneResult, RunSummary, SpectrumResult
from prunelimit.pipeline.stages import StageRunner, finetune_stage, planned_stages
from prunelimit.pruning import prunable_parameters
from prunelimit.runs.report import summary_lines
from prunelimit.runs.rundir import RunDir
from prunelimit.train.loop import TrainResult
from helpers import cli

TINY = ["model.name=tiny_mlp", "data.dataset=digits", "train.epochs=1", "finetune.epochs=1",
        "limit.sweep_points=20", "limit.epsilon=0.05", "spectrum.lanczos_iter=6", "spectrum.top_k=1",
        "spectrum.trace_samples=2", "show_progress=false", "gp.sparsity_from=config", "prune.sparsity=0.5"]


def kept_fraction(model) -> float:
    params = [p for _, p in prunable_parameters(model)]
    return sum(int((p != 0).sum()) for p in params) / sum(p.numel() for p in params)


class Stubs:
    """Training that only counts its calls (and keeps pruned weights at zero); an evaluation whose accuracy
    and loss are a function of the fraction of weights kept, so the sweep has a limit to find."""

    def __init__(self, monkeypatch):
        self.trained = self.evaluated = 0
        monkeypatch.setattr(prunelimit.train, "train", self.train)
        for module in (limit_mod, gp_mod, dense_mod):
            monkeypatch.setattr(module, "evaluator", self.evaluator)
        self.plots: list[str] = []   # the figures are tested in tests/limit and tests/spectrum; here they cost time
        for module, name in (("prunelimit.limit.plots", "plot_sweep"), ("prunelimit.limit.plots", "plot_width"),
                             ("prunelimit.spectrum.plots", "plot_density")):
            monkeypatch.setattr(f"{module}.{name}", lambda path, *a, **k: self.plots.append(Path(path).name))

    def train(self, model, train_loader, test_loader, cfg, *, masks=None, run_dir=None, **kw):
        self.trained += 1
        if masks:   # fine-tuning moves the kept weights (so tests can tell its weights from the pruned ones)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.add_(0.25)
                    if name in masks:
                        p.mul_(masks[name].to(p.dtype))
            if run_dir is not None:   # the real loop's last checkpoint holds the final weights
                torch.save({"model": {k: v.detach().clone() for k, v in model.state_dict().items()}},
                           Path(run_dir) / "checkpoint_last.pth.tar")
        return TrainResult(best_top1=80.0, final={"test_top1": 79.5})

    def evaluator(self, cfg, loader, device, num_classes, **kw):
        def evaluate(model):
            self.evaluated += 1
            kept = kept_fraction(model)
            acc = 90.0 * min(1.0, kept / 0.3)    # falls once more than 70 % of the weights are gone
            loss = 0.5 + (1.0 - kept) ** 4
            return {"loss": loss, "data_loss": loss, "top1": acc, "top5": 100.0, "count": 64}
        return evaluate


def tiny_data(seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 10, (96,), generator=g)
    train, test = TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])
    return Data(train=train, train_eval=train, test=test, num_classes=10)


def context(tmp_path: Path, *overrides: str) -> Context:
    cfg = load_config("default", [*TINY, f"out={tmp_path / 'run'}", *overrides])
    return Context(cfg=cfg, run=RunDir(tmp_path / "run"), device=torch.device("cpu"))


def round_trip(result):
    return type(result).from_json(json.loads(json.dumps(result.to_json())))


# ---- the limit pipeline ------------------------------------------------------------------------------
def test_limit_stages_run_once_then_load_what_they_computed(tmp_path, monkeypatch):
    stubs, data = Stubs(monkeypatch), tiny_data()
    ctx = context(tmp_path)
    model, dense = dense_model(ctx, data)
    first = run_limit(ctx, model, data)
    assert stubs.trained == 1 and stubs.evaluated > 20   # a dense training and the sweep (test + train)
    assert isinstance(first, LimitResult) and first.eps == pytest.approx(0.05)
    assert sorted(stubs.plots) == ["gaussian_width.png", "spectral_density.png", "sweep.png"]
    # the stub's accuracy 90 * min(1, kept / 0.3) drops by more than 1 point once kept < 0.3 * 89 / 90
    p_drop = 1 - 0.3 * 89 / 90
    assert p_drop - 0.051 <= first.actual["acc_drop"].prune_fraction <= p_drop
    evaluated = stubs.evaluated

    def no_hessian(*a, **k):
        raise AssertionError("a finished spectrum must not build the Hessian again")

    monkeypatch.setattr("prunelimit.spectrum.slq_spectrum", no_hessian)
    again_ctx = context(tmp_path)
    model2, dense2 = dense_model(again_ctx, data)
    second = run_limit(again_ctx, model2, data)
    assert (stubs.trained, stubs.evaluated) == (1, evaluated)   # nothing trained or evaluated again
    assert second == first and dense2 == dense                   # loaded = computed, field by field
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_spectrum_result_loaded_equals_the_computed_one(tmp_path, monkeypatch):
    Stubs(monkeypatch)
    data, ctx = tiny_data(), context(tmp_path)
    model, _ = dense_model(ctx, data)
    get_op = lambda: limit_mod.hessian_setup(ctx, model, data)[0]()   # noqa: E731
    computed = ctx.runner.drive(SpectrumStage(ctx, get_op))
    assert isinstance(computed, SpectrumResult) and computed.dim == sum(p.numel() for p in model.parameters())
    assert math.isclose(sum(computed.weights), 1.0, rel_tol=1e-9)   # SLQ weights of one probe sum to 1
    loaded = ctx.runner.drive(SpectrumStage(ctx, lambda: pytest.fail("loaded, not computed")))
    assert loaded == computed
    marker = json.loads((tmp_path / "run" / "stages" / "spectrum.json").read_text())
    assert marker["dim"] == computed.dim and marker["top_eigenvalue"] == list(computed.top_eigenvalues[:1])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A run directory whose dense, sweep, spectrum and limit stages finished."""
    with pytest.MonkeyPatch.context() as mp:
        Stubs(mp)
        ctx = context(tmp_path_factory.mktemp("finished"))
        model, _ = dense_model(ctx, tiny_data())
        run_limit(ctx, model, tiny_data())
    return ctx.run.path


@pytest.mark.parametrize("key", ["spectrum.lean_graphs=false", "spectrum.cache_graph='false'",
                                 "spectrum.memory_budget=1GiB", "spectrum.hessian_batch_size=7",
                                 "spectrum.checkpoint_every=0", "spectrum.basis_device=cpu",
                                 "spectrum.batched_probes=true"])
def test_a_speed_only_key_resumes_a_finished_spectrum(finished, key):
    cfg = load_config("default", [*TINY, f"out={finished}", key])
    runner = StageRunner(cfg, RunDir(finished))
    planned = planned_stages(cfg, finished)
    runner.preflight(planned)                                   # what open_run checks: nothing refused
    assert [s.name for s in planned[:4]] == ["dense", "sweep", "spectrum", "limit"]
    for stage in planned[:4]:                                   # all four load their finished records
        assert runner.check(stage) is not None, stage.name


@pytest.mark.parametrize("key, stage", [("spectrum.reorthogonalize=false", "spectrum"),
                                        ("spectrum.lanczos_iter=7", "spectrum"), ("spectrum.seed=3", "spectrum"),
                                        ("spectrum.matrix=gauss_newton", "spectrum"),
                                        ("spectrum.density_kernel=original", "limit"),
                                        ("limit.loss=regularized", "spectrum")])
def test_a_numbers_key_is_refused_naming_it(finished, key, stage):
    cfg = load_config("default", [*TINY, f"out={finished}", key])
    with pytest.raises(PrunelimitError, match=rf"stage '{stage}' made with different settings \({key.split('=')[0]}"):
        StageRunner(cfg, RunDir(finished)).preflight(planned_stages(cfg, finished))


@pytest.mark.parametrize("key", ["limit.rule=acc_drop", "limit.delta=2.5", "limit.reading=largest_passing",
                                 "limit.loss=regularized", "limit.coarse_points=9"])
def test_limit_only_keys_of_a_grid_sweep_redo_the_limit_stage_only(finished, key):
    """With limit.adaptive false the sweep's grid is all it evaluates: the rule's keys reach the limit
    stage (and limit.loss the Hessian), never the sweep."""
    cfg = load_config("default", [*TINY, f"out={finished}", key])
    assert cfg.limit.adaptive is False
    runner = StageRunner(cfg, RunDir(finished))
    by_name = {s.name: s for s in planned_stages(cfg, finished)}
    assert runner.check(by_name["dense"]) is not None and runner.check(by_name["sweep"]) is not None
    refused = ["spectrum", "limit"] if key.startswith("limit.loss") else ["limit"]
    for name in refused:
        with pytest.raises(PrunelimitError, match=rf"stage '{name}' made with different settings \({key.split('=')[0]}"):
            runner.check(by_name[name])


def test_the_adaptive_search_keeps_the_rule_in_the_sweep_fingerprint(tmp_path):
    grid = StageRunner(load_config("default", TINY), RunDir(tmp_path)).fingerprint(
        planned_stages(load_config("default", TINY), tmp_path)[1])
    cfg = load_config("default", [*TINY, "limit.adaptive=true", "limit.rule=loss_increase"])
    adaptive = StageRunner(cfg, RunDir(tmp_path)).fingerprint(planned_stages(cfg, tmp_path)[1])
    assert "limit.rule" not in grid and "limit.delta" not in grid
    assert {"limit.rule", "limit.delta", "limit.reading", "limit.loss", "limit.coarse_points",
            "limit.epsilon"} <= set(adaptive)


@pytest.mark.parametrize("key", ["train.eval_every=3", "train.save_every_epoch=false", "stages.save_model=false"])
def test_keys_that_change_no_trained_weight_resume_every_stage(finished, key):
    cfg = load_config("default", [*TINY, f"out={finished}", key])
    runner = StageRunner(cfg, RunDir(finished))
    for stage in planned_stages(cfg, finished):
        if stage.name in ("dense", "sweep", "spectrum", "limit"):
            assert runner.check(stage) is not None, stage.name


def test_a_marker_with_the_older_wider_fingerprint_still_loads(finished, tmp_path):
    """Markers written while stages.save_model and the limit rule's keys were in the dense and sweep
    fingerprints are compared on the keys those stages depend on now."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished, old)
    for name, extra in (("dense", {"stages.save_model": False}), ("sweep", {"limit.rule": "x", "limit.delta": 9})):
        marker = old / "stages" / f"{name}.json"
        record = json.loads(marker.read_text())
        record["_fingerprint"].update(extra)
        record["_fingerprint"]["train"]["eval_every"] = 99
        marker.write_text(json.dumps(record))
    cfg = load_config("default", [*TINY, f"out={old}"])
    runner = StageRunner(cfg, RunDir(old))
    for stage in planned_stages(cfg, old)[:2]:
        assert runner.check(stage) is not None, stage.name


def test_a_started_stage_under_other_settings_is_not_resumed(tmp_path, monkeypatch):
    stubs = Stubs(monkeypatch)
    ctx = context(tmp_path)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prunelimit.train, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        dense_model(ctx, tiny_data())
    assert (tmp_path / "run" / "stages" / "dense.started.json").exists()
    monkeypatch.setattr(prunelimit.train, "train", stubs.train)
    with pytest.raises(PrunelimitError, match=r"partly run stage 'dense'.*\(train.lr: 0.05 -> 0.01\)"):
        dense_model(context(tmp_path, "train.lr=0.01"), tiny_data())
    _, result = dense_model(context(tmp_path), tiny_data())    # the same settings resume it
    assert stubs.trained == 1 and result.source == "trained" and result.best_top1 == 80.0


# ---- GP, GP+MT, fine-tuning ------------------------------------------------------------------------------
def test_prune_and_finetune_run_once_and_reload_equal(tmp_path, monkeypatch):
    stubs, data = Stubs(monkeypatch), tiny_data()
    ctx = context(tmp_path, "prune.min_threshold=5")
    model, dense = dense_model(ctx, data)
    first = run_gp(ctx, model, dense, data, 0.5)
    assert set(first) == {"gp", "gp_mt"} and stubs.trained == 3     # dense + two fine-tunings
    for method, r in first.items():
        assert isinstance(r, PruneResult) and abs(r.pruned_weights - 0.5 * r.prunable_weights) <= 1
        assert r.finetune == FinetuneResult(best_top1=80.0, final_top1=79.5, epochs=1, pruned_weights_nonzero=0,
                                            dir=method)   # relative to the run
        assert r.size_and_compute.nonzeros < r.size_and_compute.params
    assert first["gp_mt"].floor is not None and first["gp"].floor is None
    again = run_gp(context(tmp_path, "prune.min_threshold=5"), model, dense, data, 0.5)
    assert stubs.trained == 3 and again == first
    with pytest.raises(PrunelimitError, match=r"stage 'gp_finetune' made with different settings \(finetune.lr"):
        run_gp(context(tmp_path, "prune.min_threshold=5", "finetune.lr=0.5"), model, dense, data, 0.5)


def prune_and_finetune(ctx, model, data, sparsity: float = 0.5):
    """Drive GP's prune unit and then its fine-tune unit on ``model``; returns the prune unit, whose
    ``model`` the fine-tuning trained (or loaded)."""
    unit = gp_mod.PruneStage(ctx, model, data, "gp", sparsity, None)
    ctx.runner.drive(unit)
    out = ctx.run.sub("gp")
    stage = finetune_stage(ctx.cfg, "gp", masks=out / gp_mod.MASK_FILE, weights=out / gp_mod.PRUNED_FILE,
                           method_dir=out, run_path=ctx.run.path)
    ctx.runner.drive(gp_mod.FinetuneStage(ctx, unit.model, unit.masks, data, out, stage, "GP", None))
    return unit


def test_a_finished_finetune_leaves_the_model_holding_its_weights(tmp_path, monkeypatch):
    """A later stage measuring the fine-tuned model measures the same weights whether the fine-tuning ran
    in this command or was loaded (not the pruned weights it started from)."""
    Stubs(monkeypatch)
    data = tiny_data()
    model, _ = dense_model(context(tmp_path), data)

    def finetuned(ctx):
        unit = prune_and_finetune(ctx, model, data)
        return {k: v.clone() for k, v in unit.model.state_dict().items()}

    computed = finetuned(context(tmp_path))
    loaded = finetuned(context(tmp_path))
    pruned = torch.load(tmp_path / "run" / "gp" / "prunedmodel.pth.tar")["state_dict"]
    assert all(torch.equal(computed[k], loaded[k]) for k in computed)
    assert not all(torch.equal(pruned[k], loaded[k]) for k in loaded)


def test_the_finetune_refusal_names_the_command_that_ran_it(tmp_path):
    cfg = load_config("default", TINY)
    d = tmp_path / "gp"
    by_run = finetune_stage(cfg, "gp", d / "m", d / "w", d, tmp_path, command="run").redo_hint
    by_finetune = finetune_stage(cfg, "gp", d / "m", d / "w", d, tmp_path, command="finetune").redo_hint
    assert "`prunelimit run` with another --out" in by_run and "finetune --model" not in by_run
    assert "prunelimit finetune --model" in by_finetune


# ---- typed results and the summary --------------------------------------------------------------------
def test_typed_results_survive_their_json_and_print_the_same_summary(tmp_path, monkeypatch):
    Stubs(monkeypatch)
    data = tiny_data()
    ctx = context(tmp_path, "prune.min_threshold=5")
    model, dense = dense_model(ctx, data)
    limit = run_limit(ctx, model, data)
    gp = run_gp(ctx, model, dense, data, 0.5)
    summary = RunSummary(pipeline="default", run_dir=str(ctx.run.path), model="tiny_mlp", dataset="digits",
                         dense=dense, limit=limit, sparsity=0.5, gp=gp, seconds=1.5, stage_seconds={"dense": 0.5})
    for result in (dense, limit, limit.predicted, *limit.actual.values(), *gp.values(), gp["gp"].finetune,
                   gp["gp"].size_and_compute, summary):
        assert round_trip(result) == result, type(result).__name__
    with pytest.raises(dataclasses_frozen_error()):
        limit.eps = 1.0
    lines = summary_lines(summary)
    assert lines == summary_lines(summary.to_json())
    pred = limit.predicted
    assert f"  dense model (trained): test top-1 {dense.test_top1:.2f} %" in lines
    assert any(line.startswith("  predicted (Gaussian width fixed point)") and
               line.endswith(f"{pred.prune_fraction:>14.4f}  {pred.keep_fraction:>13.4f}") for line in lines)
    gp_line = next(line for line in lines if line.startswith("  GP      "))
    assert gp_line.split() == ["GP", f"{gp['gp'].sparsity_achieved:.4f}", f"{dense.test_top1:.2f}", "%",
                               f"{gp['gp'].post_prune_acc:.2f}", "%", "80.00", "%"]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


OLD_SUMMARY = {   # summary.json as an older version wrote it: no readings, no loss convention, no sizes
    "pipeline": "default", "run_dir": "runs/old", "model": "fc_small", "dataset": "digits",
    "dense": {"source": "trained", "weights": "runs/old/dense/model_final.pth.tar", "epochs": 5,
              "test_top1": 97.2222, "best_top1": 97.5, "l1_lambda": 0.0005},
    "limit": {"important_ev_rate": 0.0, "eps": 0.0047, "predicted": {"prune_fraction": 0.9451, "keep_fraction": 0.0549},
              "actual": {"above_baseline": {"prune_fraction": 0.958, "keep_fraction": 0.042},
                         "acc_drop": {"prune_fraction": None, "keep_fraction": None, "reason": "never drops"}},
              "rule": "above_baseline"},
    "sparsity": 0.9451,
    "gp": {"gp": {"method": "gp", "sparsity_target": 0.9451, "prunable_weights": 50200, "pruned_weights": 47444,
                  "sparsity_achieved": 0.94510, "pre_acc": 97.2222, "post_prune_acc": 97.5,
                  "groups": {"fc1": {"n": 19200, "pruned": 17414, "sparsity": 0.90698}},
                  "finetune": {"best_top1": 97.5, "final_top1": 97.5, "epochs": 5}}},
    "seconds": 11.7}


def test_report_reads_a_summary_written_by_an_older_version(tmp_path, capsys):
    run = tmp_path / "old"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(OLD_SUMMARY))
    assert cli("report", run) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "prunelimit default run: fc_small on digits"   # from the first line: nothing precedes it
    assert "  dense model (trained): test top-1 97.22 %" in out
    # readings absent: each rule read its default way; a missing limit says why
    assert any(line.startswith("  actual: largest p with test acc > unpruned (original rule)")
               and line.endswith("0.9580         0.0420") for line in out)
    assert any("no limit - never drops" in line for line in out)
    assert "  eps 0.0047, flat fraction q 0.00" in out
    assert "  GP         0.9451   97.22 %   97.50 %     97.50 %" in out
    assert "  GP sparsity by layer group: fc1 0.907" in out
    assert "Finished in 11.7 s." in out
    summary = RunSummary.from_json(OLD_SUMMARY)
    assert summary.limit.loss == "data" and summary.gp["gp"].size_and_compute is None


def test_report_refuses_a_file_that_is_not_a_summary(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("[1, 2]")
    assert cli("report", tmp_path) == 2
    assert "is not a prunelimit summary" in capsys.readouterr().err


# ---- a new stage: one unit plus its registration ------------------------------------------------------
def test_a_registered_unit_is_planned_skipped_and_refused_like_the_others(tmp_path, monkeypatch):
    from prunelimit.pipeline import stages as stages_mod
    from prunelimit.pipeline.results import RowsResult
    from prunelimit.pipeline.stages import Stage, StageUnit, plan_stages

    source = tmp_path / "counts.txt"
    source.write_text("3 5 8")

    def count_stage(cfg) -> Stage:
        return Stage("count", ("spectrum.row_threshold",), inputs={"source": source})

    class CountStage(StageUnit):   # q = the share of odd numbers in a file, as a RowsResult
        runs = 0

        def __init__(self, ctx):
            self.ctx = ctx

        def stage(self):
            return count_stage(self.ctx.cfg)

        def run(self):
            CountStage.runs += 1
            numbers = [int(n) for n in source.read_text().split()]
            return RowsResult(flat_fraction=sum(n % 2 for n in numbers) / len(numbers), flat_count=len(numbers))

        def load(self, record):
            return RowsResult.from_json(record)

    monkeypatch.setattr(stages_mod, "_PLANNERS", list(stages_mod._PLANNERS))   # registered for this test only
    plan_stages(lambda cfg, run_path, *, gp, command: [count_stage(cfg)])
    ctx = context(tmp_path)
    assert planned_stages(ctx.cfg, ctx.run.path)[-1].name == "count"
    first = ctx.runner.drive(CountStage(ctx))
    assert first == RowsResult(flat_fraction=2 / 3, flat_count=3)
    assert context(tmp_path).runner.drive(CountStage(ctx)) == first and CountStage.runs == 1
    source.write_text("3 5 7")   # other bytes in the file it reads: refused before any work
    changed = context(tmp_path)
    with pytest.raises(PrunelimitError, match=r"stage 'count' made with different settings \(inputs.source"):
        changed.runner.preflight(planned_stages(changed.cfg, changed.run.path))
