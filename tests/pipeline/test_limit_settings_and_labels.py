"""The limit pipeline's late failures and labels, through the CLI on the embedded digits default (fc_small,
D = 50 610 parameters): settings beyond the Hessian's dimension are refused before the spectrum starts,
a memory budget that cannot mean what it says is refused, Gauss-Newton results say so, and the trace
bound says when the Hessian is indefinite."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from helpers import cli, one_error
from prunelimit.errors import PrunelimitError
from prunelimit.spectrum.config import SpectrumConfig

TINY = ["train.epochs=2", "spectrum.trace_samples=0", "--no-progress"]
SMALL_LIMIT = ["train.epochs=5", "limit.sweep_points=100", "spectrum.lanczos_iter=16", "spectrum.trace_samples=4",
               "--no-progress"]
FAST_LIMIT = ["train.epochs=2", "limit.sweep_points=20", "spectrum.lanczos_iter=6", "spectrum.top_k=1",
              "spectrum.trace_samples=2", "--no-progress"]
DIGITS_DIM = 50_610   # fc_small on digits: the Hessian's dimension (spectrum.json's dim, checked below)


class DiagonalOperator:
    """H = diag(d), whose eigenvalues are d itself."""

    def __init__(self, d: torch.Tensor):
        self.d, self.dim, self.dtype, self.device = d, d.numel(), d.dtype, d.device

    def matmat(self, V, out=None):
        return torch.mul(V, self.d, out=out) if out is not None else V * self.d


def read(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("key", ["lanczos_iter", "top_k"])
def test_a_size_beyond_the_hessian_dimension_is_refused_before_the_spectrum_starts(tmp_path, capsys, key):
    out = tmp_path / "run"
    assert cli("spectrum", *TINY, f"spectrum.{key}=100000", "--out", out) == 2
    error = one_error(capsys)
    assert f"spectrum.{key}=100000 exceeds the Hessian's dimension D={DIGITS_DIM:,}" in error, error
    assert f"set spectrum.{key} to at most {DIGITS_DIM}" in error
    assert not (out / "stages" / "spectrum.started.json").exists()    # nothing marks the stage as under way
    assert not (out / "limit" / "lanczos_state").exists()
    # so the corrected command runs in the same directory instead of being refused as a resume
    assert cli("spectrum", *TINY, "spectrum.lanczos_iter=4", "spectrum.top_k=2", "--out", out) == 0
    spectrum = read(out / "limit" / "spectrum.json")
    assert spectrum["dim"] == DIGITS_DIM and spectrum["lanczos_iter"] == 4


def test_top_k_above_the_library_default_of_100_steps_gets_the_steps_it_needs():
    from prunelimit.pipeline.limit import top_k_steps
    from prunelimit.spectrum import top_eigenvalues

    # a Hessian-like spectrum: 200 decaying outliers over a bulk near zero
    bulk = 1e-4 * torch.randn(1800, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = torch.cat([torch.logspace(1, -3, 200, dtype=torch.float64), bulk])
    op = DiagonalOperator(d)
    with pytest.raises(PrunelimitError, match="max_iter=100 must be an integer >= top_k=150"):
        top_eigenvalues(op, 150)                      # what the pipeline used to hit after the whole SLQ
    assert top_k_steps(5, 2000) == 100 and top_k_steps(150, 2000) == 450 and top_k_steps(150, 300) == 300
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # converged: no warning
        values, _ = top_eigenvalues(op, 150, max_iter=top_k_steps(150, op.dim))
    reference = d.sort(descending=True).values[:150]
    assert float((values - reference).abs().max()) <= 1e-10 * float(reference[0])


@pytest.mark.parametrize("value", [2, 1.5, "2", "1000"])
def test_a_bare_memory_budget_that_is_neither_fraction_nor_bytes_is_refused(value, capsys):
    with pytest.raises(PrunelimitError) as err:
        SpectrumConfig(memory_budget=value)
    message = str(err.value)
    assert f"spectrum.memory_budget={value!r} is neither a fraction in (0, 1]" in message
    assert "'6GiB'" in message and "0.5" in message
    assert cli("validate", f"spectrum.memory_budget={value}") == 2
    assert "spectrum.memory_budget=" in one_error(capsys)


@pytest.mark.parametrize("value", [0.5, "0.25", 2**20, "6GiB", "64KiB"])
def test_fractions_byte_counts_and_sizes_with_units_are_accepted(value):
    assert SpectrumConfig(memory_budget=value).memory_budget == value


def test_a_budget_forcing_tiny_hessian_batches_says_so(tmp_path, capsys):
    from prunelimit.spectrum.memory import hessian_batch_size

    args = [*TINY, "spectrum.lanczos_iter=2", "spectrum.top_k=1"]
    assert cli("spectrum", *args, "spectrum.memory_budget=256KiB", "--out", tmp_path / "small") == 0
    said = capsys.readouterr().out
    line = next(x for x in said.splitlines() if x.startswith("spectrum: Hessian batches of"))
    size = int(line.split()[4])
    per_sample = float(line.split("takes ")[1].split(" KiB")[0]) * 1024
    assert abs(size - hessian_batch_size(per_sample, 256 * 1024, 1437)) <= 1   # the budget's own choice
    assert size * 4 <= 128
    assert (f"warning: spectrum.memory_budget (256.0 KiB) forces Hessian batches of {size} samples, "
            f"{128 // size}x smaller than the training batch of 128") in said
    assert cli("spectrum", *args, "--out", tmp_path / "default") == 0
    assert "warning: spectrum.memory_budget" not in capsys.readouterr().out


def test_hessian_batch_size_without_full_data_is_refused_not_ignored(capsys):
    args = ["data.use_full_data=false", "limit.epsilon=0.01"]
    assert cli("validate", *args) == 0
    assert cli("validate", *args, "spectrum.hessian_batch_size=64") == 2
    error = one_error(capsys)
    assert "spectrum.hessian_batch_size=64" in error and "data.use_full_data" in error



def test_hessian_batch_size_without_full_data_is_refused_in_a_config_file(tmp_path, capsys):
    config = tmp_path / "one_batch.yaml"
    config.write_text("data:\n  dataset: digits\n  use_full_data: false\nlimit:\n  epsilon: 0.01\n"
                      "spectrum:\n  hessian_batch_size: 64\n")
    assert cli("validate", config) == 2
    assert "spectrum.hessian_batch_size=64 re-batches the full training set" in one_error(capsys)


def bound_fields_agree_with_the_spectrum(run):
    result, spectrum = read(run / "limit" / "result.json"), read(run / "limit" / "spectrum.json")
    nodes, weights = np.array(spectrum["nodes"]), np.array(spectrum["weights"])
    weights = weights / weights.sum()
    negative = weights[nodes < -1e-4 * np.abs(nodes).max()].sum()
    assert result["slq_negative_weight"] == pytest.approx(negative, abs=1e-12)
    assert result["slq_abs_trace"] == pytest.approx(spectrum["dim"] * (weights * np.abs(nodes)).sum(), rel=1e-9)
    assert result["trace_hutchinson"] == spectrum["trace"]
    # Jensen on the SLQ measure itself: never above the prediction from the same measure
    assert result["abs_trace_bound_limit"] <= result["predicted"]["prune_fraction"] + 1e-9
    # the bound falls as the trace grows: the larger trace gives the smaller bound
    if spectrum["trace"] is not None:
        larger_hutchinson = spectrum["trace"] > result["slq_abs_trace"]
        assert (result["trace_bound_limit"] < result["abs_trace_bound_limit"]) == larger_hutchinson
    return result


def test_gauss_newton_results_are_labelled_everywhere(tmp_path, capsys):
    run = tmp_path / "gn"
    assert cli("limit", *SMALL_LIMIT, "spectrum.matrix=gauss_newton", "--out", run) == 0
    said = capsys.readouterr().out
    result = bound_fields_agree_with_the_spectrum(run)
    assert result["matrix"] == "gauss_newton"
    assert result["slq_negative_weight"] == 0.0 and result["trace_bound_guaranteed"] is True
    label = "predicted (Gaussian width fixed point, Gauss-Newton matrix)"
    assert label in said
    assert "from Hutchinson's Tr G" in said and "G is PSD by construction" in said
    assert "when H is PSD" not in said
    assert "predicted from the Gauss-Newton matrix (not the Hessian)" in (run / "limit" / "result.txt").read_text()
    assert label in (run / "report.md").read_text()
    assert cli("report", run) == 0
    report = capsys.readouterr().out
    assert label in report and "trace bound" in report


def test_an_indefinite_hessian_gets_its_trace_bound_from_the_slq_abs_trace(tmp_path, capsys):
    run = tmp_path / "h"
    assert cli("limit", *SMALL_LIMIT, "--out", run) == 0
    said = capsys.readouterr().out
    result = bound_fields_agree_with_the_spectrum(run)
    assert result["matrix"] == "hessian"
    assert "predicted (Gaussian width fixed point) " in said
    assert result["slq_negative_weight"] > 0.001   # digits after 5 epochs: negative curvature (~1 %)
    assert result["trace_bound_guaranteed"] is False
    line = next(x for x in said.splitlines() if x.startswith("trace bound"))
    assert f"NOT guaranteed: the SLQ puts {result['slq_negative_weight']:.1%} of its weight on negative" in line
    assert f"from the SLQ's Tr|H| = {result['slq_abs_trace']:.4g}: p >= {result['abs_trace_bound_limit']:.4f}" in line
    assert cli("report", run) == 0
    assert line in capsys.readouterr().out   # the bound stays in the summary, not only in the stage's output


def test_without_a_hutchinson_trace_the_bound_says_why_and_keeps_the_slq_one(tmp_path, capsys):
    run = tmp_path / "no_trace"
    assert cli("limit", *SMALL_LIMIT, "spectrum.trace_samples=0", "--out", run) == 0
    result = bound_fields_agree_with_the_spectrum(run)
    assert result["trace_bound_limit"] is None
    assert result["trace_bound_reason"] == "no Hutchinson trace (spectrum.trace_samples=0)"
    assert result["abs_trace_bound_limit"] is not None
    assert "no Hutchinson trace (spectrum.trace_samples=0); from the SLQ's Tr|H|" in capsys.readouterr().out


def test_the_summary_marks_a_limit_predicted_from_an_earlier_spectrum(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("limit", *FAST_LIMIT, "--out", run) == 0
    assert "EARLIER spectrum" not in capsys.readouterr().out
    assert cli("spectrum", *FAST_LIMIT, "--out", run) == 0          # the same spectrum, reused: no note
    assert "EARLIER spectrum" not in capsys.readouterr().out
    (run / "stages" / "spectrum.json").unlink()                          # recomputed under other settings
    assert cli("spectrum", *FAST_LIMIT, "spectrum.lanczos_iter=4", "--out", run) == 0
    said = capsys.readouterr().out
    note = ("(from an EARLIER spectrum: limit/spectrum.json has been recomputed since this prediction was made; "
            "run `prunelimit limit` on this directory to predict from the current one)")
    assert note in said
    lines = said.splitlines()
    assert lines[lines.index(f"  {note}") - 1].startswith("How sparse can it be pruned?")
    assert cli("report", run) == 0
    assert note in capsys.readouterr().out


def test_masks_flag_and_a_different_masks_override_are_refused(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert cli("spectrum", *TINY, "--masks", a, f"spectrum.masks={b}", "--out", tmp_path / "run") == 2
    error = one_error(capsys)
    assert f"--masks {a} and the override 'spectrum.masks={b}' name two mask files" in error
    # the same file twice is no conflict: the run goes on to read it (here: it does not exist)
    assert cli("spectrum", *TINY, "--masks", a, f"spectrum.masks={a}", "--out", tmp_path / "run") == 2
    error = one_error(capsys)
    assert "two mask files" not in error and "does not exist" in error
