"""The run configuration: one dataclass per section, composed from the concept folders.

A YAML file is either sectioned (``model: {name: ...}``, ``train: {...}``, ...) or in the original
limit repository's flat form (``model: AlexNet``, ``lr: 0.01``, ``lmbda: 3e-5`` ...); see
``original.py`` for how flat keys map onto sections. Both may be mixed: flat keys first, sections on top.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prunelimit.data import DataConfig
from prunelimit.limit import LimitConfig
from prunelimit.pruning import PruneConfig
from prunelimit.spectrum import SpectrumConfig
from prunelimit.train import GP_FINETUNE_DEFAULTS, TrainConfig
from prunelimit.errors import PrunelimitError

PIPELINES = ("default", "gp", "limit")
METHODS = ("gp", "gp_mt")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "fc_small"                 # a name from `prunelimit ls models`
    num_classes: int | None = None         # None: the dataset's number of classes
    input_shape: list[int] | None = None   # (C, H, W) of one example; None: the dataset's
    init: str = "default"                  # "default" (PyTorch's), "kaiming_normal" (the limit paper's), "kaiming_uniform"
    checkpoint: str | None = None          # dense weights to start from; None: train (or random init for `prune`)
    kwargs: dict = field(default_factory=dict)  # extra model arguments, e.g. {dropout: 0.3}

    def __post_init__(self):
        from prunelimit.models import model_info

        model_info(self.name)  # raises ValueError listing valid names
        if self.num_classes is not None and self.num_classes < 2:
            raise PrunelimitError(f"model.num_classes must be >= 2, got {self.num_classes}")
        from prunelimit.models import INIT_SCHEMES

        if self.init not in INIT_SCHEMES:
            raise PrunelimitError(f"model.init must be one of {list(INIT_SCHEMES)}, got {self.init!r}")
        if self.input_shape is not None and (len(self.input_shape) != 3 or min(self.input_shape) < 1):
            raise PrunelimitError(f"model.input_shape must be [C, H, W] with positive sizes, got {self.input_shape!r}")
        if self.checkpoint is not None and not self.checkpoint.strip():
            object.__setattr__(self, "checkpoint", None)  # frozen: normalised once, here


@dataclass(frozen=True)
class GPConfig:
    methods: list[str] = field(default_factory=lambda: ["gp", "gp_mt"])  # which prunings to run and compare
    sparsity_from: str = "config"      # "config": prune.sparsity; "predicted_limit": the limit pipeline's p*
    finetune: bool = True              # fine-tune each pruned model with the finetune section

    def __post_init__(self):
        for m in self.methods:
            if m not in METHODS:
                raise PrunelimitError(f"gp.methods: unknown method {m!r}; valid: {list(METHODS)}")
        if self.sparsity_from not in ("config", "predicted_limit"):
            raise PrunelimitError(f"gp.sparsity_from must be 'config' or 'predicted_limit', got {self.sparsity_from!r}")


@dataclass(frozen=True)
class StagesConfig:
    train: bool = True                 # train the dense model (skipped when model.checkpoint is given)
    sweep: bool = True                 # one-shot pruning sweep (original key: sparse)
    spectrum: bool = True              # Hessian spectrum by SLQ
    limit: bool = True                 # predicted vs actual limit, result files, plots
    save_model: bool = True            # keep the trained dense model's files in dense/ (original key: save_model);
                                       # false: deleted once the command is done, a rerun trains again


@dataclass(frozen=True)
class RunConfig:
    """The whole run, validated across sections; frozen once built (a value settled at run time, such as
    an MT lowered to fit, makes a new config with ``dataclasses.replace``)."""
    pipeline: str = "default"          # "default" (limit then GP/GP+MT), "gp", or "limit"
    name: str | None = None            # run name; the run directory is <out or runs/NAME>
    out: str | None = None             # run directory; default runs/<name>
    device: str = "auto"               # "auto", "cpu", "cuda", "cuda:1"
    seed: int = 0                      # seeds model init, data order, training and probes (every per-purpose
                                       # seed left null: train.seed, finetune.seed, spectrum.seed)
    gpu: int | None = None             # original key: GPU index used when device is "auto" and CUDA exists
    show_progress: bool = True         # tqdm progress bars
    eval_batch_size: int | None = None # total batch for evaluations and sweeps; None: the training batch size
    threads: int | None = None         # torch CPU threads per process; None: torch's default (all cores)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig | None = field(default_factory=DataConfig)   # null: no dataset (prune without evaluation)
    train: TrainConfig = field(default_factory=TrainConfig)        # dense (optionally L1) training
    stages: StagesConfig = field(default_factory=StagesConfig)     # limit pipeline stages
    spectrum: SpectrumConfig = field(default_factory=SpectrumConfig)
    limit: LimitConfig = field(default_factory=LimitConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)        # GP / GP+MT
    gp: GPConfig = field(default_factory=GPConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(**GP_FINETUNE_DEFAULTS))  # masked fine-tuning

    def __post_init__(self):
        if self.pipeline not in PIPELINES:
            raise PrunelimitError(f"pipeline must be one of {list(PIPELINES)}, got {self.pipeline!r}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise PrunelimitError(f"eval_batch_size must be a positive integer, got {self.eval_batch_size}")
        if self.threads is not None and self.threads < 1:
            raise PrunelimitError(f"threads must be a positive integer or null, got {self.threads}")
        if self.gpu is not None and self.gpu < 0:
            raise PrunelimitError(f"gpu must be a GPU index such as 0, got {self.gpu}")
        self._check_combinations()

    # ---- cross-section checks: what would otherwise fail after hours of work ---------------------------
    def _check_combinations(self) -> None:
        lc, st = self.limit, self.stages
        limit_runs = self.pipeline in ("limit", "default")
        if limit_runs and self.data is None:
            raise PrunelimitError(f"pipeline {self.pipeline!r} trains, sweeps and takes the Hessian on data, but "
                                  f"data is null; set data.dataset (or use pipeline: gp)")
        if limit_runs and st.limit and not st.sweep:
            raise PrunelimitError("stages.limit needs the sweep for the actual limit and R(p); set stages.sweep: true "
                                  "(original key sparse: true) or stages.limit: false")
        needs_eps = limit_runs and (st.limit or (st.sweep and lc.adaptive and lc.rule == "loss_increase"))
        if needs_eps and lc.epsilon == "loss_std" and self.data is not None and not self.data.use_full_data:
            raise PrunelimitError("data.use_full_data: false keeps one minibatch for the Hessian and epsilon, but "
                                  "limit.epsilon: loss_std is the std of the loss over minibatches and needs at least "
                                  "two; set limit.epsilon to a number (e.g. 0.01) or data.use_full_data: true")
        if (limit_runs and self.spectrum.hessian_batch_size is not None and self.data is not None
                and not self.data.use_full_data):   # pipeline/hessian.py would never read it
            raise PrunelimitError(f"spectrum.hessian_batch_size={self.spectrum.hessian_batch_size} re-batches the full "
                                  f"training set, but data.use_full_data: false takes the Hessian on one training "
                                  f"batch as it is; remove spectrum.hessian_batch_size or set data.use_full_data: true")
        if limit_runs and st.sweep and lc.rule == "loss_increase" and not lc.sweep_train:
            raise PrunelimitError("limit.rule: loss_increase compares training losses, but limit.sweep_train: false "
                                  "skips them; set sweep_train: true or choose another rule")
        if not st.train and not self.model.checkpoint:   # said by validate, before any work or file
            raise PrunelimitError("stages.train is false (original mode: eval) but no dense weights were given: set "
                                  "model.checkpoint (original key file_path) to the trained model, or stages.train: "
                                  "true")
        if self.gp.sparsity_from == "predicted_limit" and self.pipeline == "gp":
            raise PrunelimitError("gp.sparsity_from: predicted_limit needs the limit pipeline's prediction, which "
                                  "pipeline: gp does not compute; use pipeline: default or sparsity_from: config")
        if self.gp.sparsity_from == "predicted_limit" and self.pipeline == "default" and not st.limit:
            raise PrunelimitError("gp.sparsity_from: predicted_limit needs stages.limit: true (the prediction)")

    def seed_for(self, own: int | None) -> int:
        """A per-purpose seed (train.seed, finetune.seed, spectrum.seed): its own value when set, else the
        top-level ``seed``, so ``--seed`` changes every random choice of the run."""
        return self.seed if own is None else own

    def unread_reason(self, key: str) -> str | None:
        """Why this run would never read ``key`` (``section.field``), or None when it does. The CLI refuses
        a flag or override that sets an unread key instead of ignoring it."""
        section, _, field = key.partition(".")
        limit_runs, gp_runs = self.pipeline in ("limit", "default"), self.pipeline in ("gp", "default")
        if section in ("limit", "spectrum", "stages") and not limit_runs and field not in ("train", "save_model"):
            return f"pipeline {self.pipeline!r} runs no limit stages"
        if section in ("prune", "gp", "finetune") and not gp_runs:
            return f"pipeline {self.pipeline!r} does not prune (use pipeline: default or gp)"
        if section == "finetune" and not self.gp.finetune:
            return "gp.finetune is false (no fine-tuning)"
        if key == "prune.sparsity" and self.gp.sparsity_from == "predicted_limit":
            return ("this run prunes at the predicted limit (gp.sparsity_from: predicted_limit; prune.sparsity is "
                    "only the fallback when the prediction has no fixed point); add gp.sparsity_from=config to "
                    "prune at the sparsity you give")
        return None


SECTIONS = ("model", "data", "train", "stages", "spectrum", "limit", "prune", "gp", "finetune")


def section_keys() -> dict[str, list[str]]:
    from prunelimit.config.build import field_names

    hints = {f: type(getattr(RunConfig(), f)) for f in SECTIONS}
    return {s: field_names(t) for s, t in hints.items()}


def default_dict() -> dict[str, Any]:
    from prunelimit.config.build import to_dict

    return to_dict(RunConfig())
