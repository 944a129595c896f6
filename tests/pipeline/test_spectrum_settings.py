"""The spectrum stage's speed and accuracy settings through the CLI, on the embedded digits default with
2 training epochs: ``spectrum.batched_probes`` (speed only: the same Ritz values, a finished run is
reused) and ``spectrum.reorthogonalize`` (partial against full; a finished run is refused)."""
from __future__ import annotations

import json

import numpy as np

from helpers import cli, one_error

TINY = ["train.epochs=2", "spectrum.trace_samples=0", "--no-progress"]
TWO_PROBES = [*TINY, "spectrum.lanczos_iter=8", "spectrum.lanczos_num=2", "spectrum.top_k=2"]


def read(run):
    return json.loads((run / "limit" / "spectrum.json").read_text())


def test_batched_probes_gives_the_looped_ritz_values_and_resumes_a_finished_run(tmp_path, capsys, recwarn):
    vmapped, looped = tmp_path / "vmapped", tmp_path / "looped"
    assert cli("spectrum", *TWO_PROBES, "spectrum.batched_probes=true", "--out", vmapped) == 0
    said = capsys.readouterr().out
    assert said.count("double backward batched (vmap) (batched_probes=true)") == 1, said   # said once
    assert cli("spectrum", *TWO_PROBES, "spectrum.batched_probes=false", "--out", looped) == 0
    said = capsys.readouterr().out
    assert said.count("double backward looped (batched_probes=false)") == 1, said
    assert "2 probe(s) x 8 steps" in said                      # the basis holds both probes
    assert not [w for w in recwarn if "vmap" in str(w.message)]   # the vmap'd path ran, no fall-back to the loop

    a, b = read(vmapped), read(looped)
    nodes_a, nodes_b = np.array(a["nodes"]), np.array(b["nodes"])
    assert len(nodes_a) == len(nodes_b) == 16                  # 2 probes x 8 steps
    scale = np.abs(nodes_b).max()                              # interior Ritz values near 0: compare to ‖H‖
    assert np.abs(nodes_a - nodes_b).max() <= 1e-5 * scale
    np.testing.assert_allclose(a["weights"], b["weights"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(a["top_eigenvalues"], b["top_eigenvalues"], rtol=1e-5)

    # the key changes speed only: a finished run is reused under the other setting, not refused
    assert cli("spectrum", *TWO_PROBES, "spectrum.batched_probes=false", "--out", vmapped) == 0
    said = capsys.readouterr().out
    assert "spectrum: finished earlier" in said and "Hessian:" not in said    # no operator was built
    summary = json.loads((vmapped / "summary.json").read_text())
    assert summary["reused_stages"] == ["dense", "spectrum"]
    assert read(vmapped) == a                                  # the stored spectrum was not recomputed


def test_batched_probes_is_checked_before_the_run_directory_is_made(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("spectrum", *TINY, "spectrum.batched_probes=sometimes", "--out", out) == 2
    assert "spectrum.batched_probes='sometimes' must be one of ('auto', 'true', 'false')" in one_error(capsys)
    assert cli("spectrum", *TINY, "spectrum.matrix=gauss_newton", "spectrum.batched_probes=true", "--out", out) == 2
    assert "Gauss-Newton product" in one_error(capsys)
    assert not out.exists()


def top_copies(nodes, value, rel=1e-5):
    """How many Ritz values sit at ``value``: one per probe with a (semi-)orthogonal basis; more are
    the spurious copies that Lanczos without re-orthogonalisation makes of converged eigenvalues."""
    return int((np.abs(np.array(nodes) - value) <= rel * abs(value)).sum())


def test_partial_reorthogonalisation_through_the_cli_matches_the_full_one(tmp_path, capsys):
    args = [*TINY, "spectrum.lanczos_iter=32", "spectrum.top_k=5"]
    runs = {mode: tmp_path / mode for mode in ("true", "partial", "false")}
    for mode, out in runs.items():
        assert cli("spectrum", *args, f"spectrum.reorthogonalize={mode}", "--out", out) == 0
    full, partial, none = (read(runs[m]) for m in ("true", "partial", "false"))

    # docs/HESSIAN.md: partial keeps the full mode's accuracy. Top Ritz values (converged) to float32
    # rounding, the quadrature's moments (what the width integrates) to 1e-5
    top_full, top_partial = np.sort(full["nodes"])[-5:], np.sort(partial["nodes"])[-5:]
    np.testing.assert_allclose(top_partial, top_full, rtol=1e-6)
    for power in (1, 2, 3):
        moment = [float(np.dot(r["weights"], np.array(r["nodes"]) ** power)) for r in (full, partial)]
        np.testing.assert_allclose(moment[1], moment[0], rtol=1e-5)
    # the top eigenvalues come from their own Lanczos (run to convergence, always fully re-orthogonalised,
    # so the setting does not touch them): the partial run's top Ritz values reach them too
    np.testing.assert_allclose(top_partial[::-1], full["top_eigenvalues"], rtol=1e-6)
    assert partial["top_eigenvalues"] == full["top_eigenvalues"]

    # without re-orthogonalisation, 32 steps are enough for the converged top eigenvalue to be copied
    # (2-3 copies with every seed tried, 24 and 32 steps); one copy per probe with either re-orthogonalisation
    top = full["top_eigenvalues"][0]
    assert top_copies(full["nodes"], top) == top_copies(partial["nodes"], top) == 1
    assert top_copies(none["nodes"], top) >= 2

    # a number-changing key: a finished spectrum is refused under another mode, naming the key and the fix
    assert cli("spectrum", *args, "spectrum.reorthogonalize=partial", "--out", runs["true"]) == 2
    line = one_error(capsys)
    assert "stage 'spectrum' made with different settings (spectrum.reorthogonalize: True -> 'partial')" in line
    assert "Use another --out" in line
    assert read(runs["true"]) == full                         # nothing was rewritten
