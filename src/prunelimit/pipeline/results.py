"""The typed, frozen results the stages pass on: what each stage made, as the next stage and the report read it.

Every result converts to and from the JSON its stage has always written (``to_json`` / ``from_json``): the
stage markers (``stages/<name>.json``), ``limit/spectrum.json``, ``limit/result.json`` and ``summary.json``
keep their layout, and a file written by an older version still loads (a missing key reads as None; a key
this version does not know is kept in ``extra`` and written back).

    dense -> DenseResult -> sweep -> SweepResult -> spectrum -> SpectrumResult -> rows -> RowsResult
          -> limit -> LimitResult -> {gp,gp_mt}_prune -> PruneResult -> {gp,gp_mt}_finetune -> FinetuneResult
          -> RunSummary (summary.json, report.md, the printed summary)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from prunelimit.errors import PrunelimitError


def _plain(value: Any) -> Any:
    """A JSON-ready copy: results as their JSON, tuples as lists, mappings as dicts."""
    if isinstance(value, JsonResult):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _frozen(value: Any) -> Any:
    """Lists read from JSON as tuples (a frozen result holds no list to append to)."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _frozen(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class JsonResult:
    """Base of every result: ``to_json`` writes the fields in declaration order (those named in
    ``OMIT_NONE`` only when set), then ``extra``; ``from_json`` reads them back, nested results through
    ``NESTED`` ({field: result type}) and ``NESTED_MAPS`` ({field: result type of each value})."""

    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()
    NESTED: ClassVar[Mapping[str, type]] = {}
    NESTED_MAPS: ClassVar[Mapping[str, type]] = {}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name in self.OMIT_NONE):
                continue
            out[f.name] = _plain(value)
        out.update(_plain(getattr(self, "extra", None) or {}))
        return out

    @classmethod
    def from_json(cls, record: Mapping[str, Any] | None):
        if record is None:
            return None
        if not isinstance(record, Mapping):
            raise PrunelimitError(f"{cls.__name__}: expected a JSON object, got {type(record).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for name in names - {"extra"}:
            if name not in record:
                continue
            value = record[name]
            if name in cls.NESTED:
                value = cls.NESTED[name].from_json(value)
            elif name in cls.NESTED_MAPS and value is not None:
                value = {k: cls.NESTED_MAPS[name].from_json(v) for k, v in value.items()}
            else:
                value = _frozen(value)
            kwargs[name] = value
        if "extra" in names:   # keys of a newer or older layout: kept, written back unchanged
            kwargs["extra"] = {k: v for k, v in record.items() if k not in names and not k.startswith("_")}
        return cls(**kwargs)


# ---- dense ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseResult(JsonResult):
    """The dense model's provenance: ``source`` "trained", "checkpoint", "random_init" or "given" (the
    Python API's own model); ``weights`` the file it lives in (None when it was not kept): relative to the
    run directory when trained there, the given path for a checkpoint."""

    OMIT_NONE = frozenset({"epochs", "test_top1", "test_top5", "test_loss", "best_top1", "l1_lambda"})
    source: str = "trained"
    weights: str | None = None
    epochs: int | None = None
    test_top1: float | None = None
    test_top5: float | None = None
    test_loss: float | None = None
    best_top1: float | None = None
    l1_lambda: float | None = None


# ---- the limit pipeline -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResult(JsonResult):
    """The one-shot sweep: one row per prune fraction (``limit/sweep.csv``). The marker holds the row
    count and the CSV's path; the rows themselves are read from the CSV."""

    rows: tuple[Mapping[str, float], ...] = ()
    csv: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rows": len(self.rows), "csv": self.csv}

    @classmethod
    def from_json(cls, record):
        # the marker holds no rows: a caller reaching here has a bug, not bad input
        raise TypeError("SweepResult is read from its CSV (SweepResult.from_csv), not from the marker")

    @classmethod
    def from_csv(cls, path, name: str | None = None) -> "SweepResult":
        """The rows of ``path``; ``name``: how the result names the file (default ``path``; a run's stages
        store it relative to the run directory)."""
        from prunelimit.limit.sweep import read_sweep_csv

        return cls(rows=tuple(read_sweep_csv(path)), csv=str(path) if name is None else name)


@dataclass(frozen=True)
class SpectrumResult(JsonResult):
    """``limit/spectrum.json``: the SLQ nodes and weights, the top eigenvalues, the Hutchinson trace."""

    dim: int = 0
    lanczos_iter: int = 0
    lanczos_num: int = 1
    nodes: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    top_eigenvalues: tuple[float, ...] = ()
    trace: float | None = None
    trace_stderr: float | None = None
    hvp_count: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RowsResult(JsonResult):
    """The important-eigenvalue rows: q, the fraction of flat Hessian rows (0 when not sampled)."""

    flat_fraction: float = 0.0
    flat_count: int | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class PredictedLimit(JsonResult):
    prune_fraction: float | None = None
    keep_fraction: float | None = None
    R: float | None = None
    g: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ActualLimit(JsonResult):
    """One rule's measured limit in its chosen reading; ``readings``: every reading computed (absent in
    the entries of ``readings`` themselves and in results written before readings existed)."""

    OMIT_NONE = frozenset({"readings"})
    prune_fraction: float | None = None
    keep_fraction: float | None = None
    R: float | None = None
    reading: str | None = None
    reason: str | None = None
    lower_bound: bool | None = None
    readings: Mapping[str, "ActualLimit"] | None = None

    @classmethod
    def from_json(cls, record):
        if record is None:
            return None
        readings = record.get("readings")
        base = super().from_json({k: v for k, v in record.items() if k != "readings"})
        if readings is None:
            return base
        return dataclasses.replace(base, readings={k: ActualLimit.from_json(v) for k, v in readings.items()})


@dataclass(frozen=True)
class LimitResult(JsonResult):
    """``limit/result.json``: the predicted limit and every rule's actual one, with their conventions."""

    NESTED = {"predicted": PredictedLimit}
    NESTED_MAPS = {"actual": ActualLimit}
    important_ev_rate: float | None = None
    eps: float | None = None
    integer_R: bool | None = None
    loss: str = "data"
    predicted: PredictedLimit = field(default_factory=PredictedLimit)
    actual: Mapping[str, ActualLimit] = field(default_factory=dict)
    rule: str | None = None
    reading: str | None = None
    delta: float | None = None
    result_txt_rule: str | None = None
    num_weights: int | None = None
    eps_source: str | None = None
    epsilon_ddof: int | None = None
    baseline_test_acc: float | None = None
    baseline_train_loss: float | None = None
    lanczos_iter: int | None = None
    hessian_dim: int | None = None
    trace_bound_limit: float | None = None
    trace_bound_reason: str | None = None
    matrix: str | None = None                     # "hessian" or "gauss_newton"; None: written before the key
    trace_hutchinson: float | None = None         # the Tr H the trace bound used
    trace_bound_guaranteed: bool | None = None    # false: the SLQ shows negative curvature (Tr H < Tr|H|)
    slq_negative_weight: float | None = None      # SLQ weight on eigenvalues below -1e-4 x max|θ|
    slq_abs_trace: float | None = None            # Tr|H| = D Σ w |θ| from the SLQ spectrum
    abs_trace_bound_limit: float | None = None    # the trace bound from slq_abs_trace
    spectrum_sha256: str | None = None            # the limit/spectrum.json the prediction was made from
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, record):
        if record is not None and record.get("loss") is None:   # written before loss conventions existed
            record = {**record, "loss": "data"}
        return super().from_json(record)


# ---- GP and GP+MT -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerGroup(JsonResult):
    n: int = 0
    pruned: int = 0
    sparsity: float = 0.0


@dataclass(frozen=True)
class SizeAndCompute(JsonResult):
    """``sparsity_report``'s totals; the multiply-adds are None when no example input shape is known."""

    params: int = 0
    nonzeros: int = 0
    dense_macs: int | None = None
    sparse_macs: int | None = None
    speedup: float | None = None
    bytes_dense: int = 0
    bytes_compressed: int = 0


@dataclass(frozen=True)
class FinetuneResult(JsonResult):
    best_top1: float | None = None
    final_top1: float | None = None
    epochs: int = 0
    pruned_weights_nonzero: int = 0
    dir: str | None = None


@dataclass(frozen=True)
class PruneResult(JsonResult):
    """One method's pruning (the marker holds all but the last two fields); the run adds its size and
    compute and, once fine-tuned, the fine-tuning."""

    OMIT_NONE = frozenset({"size_and_compute", "finetune"})
    NESTED = {"size_and_compute": SizeAndCompute, "finetune": FinetuneResult}
    NESTED_MAPS = {"groups": LayerGroup}
    method: str = "gp"
    sparsity_target: float = 0.0
    prunable_weights: int = 0
    pruned_weights: int = 0
    sparsity_achieved: float = 0.0
    pre_acc: float | None = None
    post_prune_acc: float | None = None
    gp_post_prune_acc: float | None = None
    groups: Mapping[str, LayerGroup] = field(default_factory=dict)
    clamped_layers: tuple[str, ...] = ()
    floor: int | None = None
    dir: str | None = None
    size_and_compute: SizeAndCompute | None = None
    finetune: FinetuneResult | None = None


# ---- the whole run ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSummary(JsonResult):
    """``summary.json``: what `prunelimit report` prints. Sections a pipeline does not run are None."""

    OMIT_NONE = frozenset({"dense", "limit", "sparsity", "gp", "seconds", "stage_seconds", "reused_stages"})
    NESTED = {"dense": DenseResult, "limit": LimitResult}
    NESTED_MAPS = {"gp": PruneResult}
    pipeline: str = ""
    run_dir: str | None = None
    model: str | None = None
    dataset: str | None = None
    dense: DenseResult | None = None
    limit: LimitResult | None = None
    sparsity: float | None = None
    gp: Mapping[str, PruneResult] | None = None
    seconds: float | None = None
    stage_seconds: Mapping[str, float] | None = None   # when each stage was computed (also a reused one's)
    reused_stages: tuple[str, ...] | None = None       # stages this command loaded from an earlier one
    extra: Mapping[str, Any] = field(default_factory=dict)

    def keeping(self, earlier: "RunSummary | None") -> "RunSummary":
        """This summary with the sections it did not run taken from ``earlier`` (the same run directory's
        previous summary): `prunelimit spectrum` on a directory `prunelimit run` made keeps the limit and
        the GP results in summary.json instead of dropping them. The stage markers guarantee that the
        kept sections were made with settings this command would have been refused under otherwise."""
        if earlier is None:
            return self
        kept = {name: getattr(earlier, name) for name in ("dense", "limit", "sparsity", "gp")
                if getattr(self, name) is None and getattr(earlier, name) is not None}
        if not kept and not earlier.extra:
            return self
        return dataclasses.replace(self, **kept, extra={**earlier.extra, **self.extra},
                                   pipeline=earlier.pipeline if kept else self.pipeline)

    def with_finetune(self, method: str, finetune: FinetuneResult) -> "RunSummary":
        """This summary with ``method``'s fine-tuning recorded (``prunelimit finetune RUN``)."""
        gp = dict(self.gp or {})
        gp[method] = dataclasses.replace(gp[method], finetune=finetune)
        return dataclasses.replace(self, gp=gp)
