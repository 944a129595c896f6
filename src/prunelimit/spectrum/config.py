"""``SpectrumConfig``: the Hessian-spectrum section of a run config."""
from __future__ import annotations

from dataclasses import dataclass
from prunelimit.errors import PrunelimitError

DENSITY_KERNELS = ("gaussian", "original")
CACHE_GRAPH_MODES = ("auto", "true", "false")
BATCHED_PROBES_MODES = ("auto", "true", "false")
MATRICES = ("hessian", "gauss_newton")
BASIS_DEVICES = ("auto", "same", "cpu")
PARAMETER_SETS = ("prunable", "all")   # which parameters the Hessian differentiates (spectrum/parameters.py)


@dataclass(frozen=True)
class SpectrumConfig:
    lanczos_iter: int = 128          # Lanczos steps (HVPs) per probe; original 128, 96 for AlexNet
    lanczos_num: int = 1             # SLQ probes (random start vectors); original 1
    top_k: int = 5                   # number of largest eigenvalues to report
    trace_samples: int = 20          # Hutchinson samples for the trace (0 = skip)
    density_points: int = 1000       # grid points of the smoothed density for plots
    density_sigma: float | None = None  # Gaussian kernel std; None = 1 % of the spectrum's range
    density_kernel: str = "gaussian"  # "gaussian" or "original" (variance 1e-10 on 100 000 bins; underflows)
    important_eigs: bool = False     # sample Hessian rows at magnitude quantiles for the flat mass q
    row_quantiles: int = 100         # number of magnitude quantiles sampled (original 100)
    row_threshold: float = 1e-7      # a row with L1 norm below this is a flat direction
    cache_graph: str | bool = "auto"  # keep the gradient graph between HVPs: "auto", "true" or "false"
                                     # (YAML true/false become "true"/"false")
    memory_budget: str | float | None = None  # cached graphs' memory: "6GiB", bytes, a fraction of the
                                     # available RAM / free CUDA memory; null = half of it
    hessian_batch_size: int | None = None  # samples per Hessian batch with full data; null = the
                                     # largest that fits the budget (epsilon keeps the training batches)
    lean_graphs: bool = True         # lean second-order graphs (false: PyTorch's plain double backward)
    batched_probes: str | bool = "auto"  # several probes' double backward in one vmap'd pass ("true"), a loop
                                     # ("false") or by device ("auto": CPU loops, CUDA vmaps); Hessian only
    seed: int | None = None          # seed of the Rademacher probes and restart vectors; None: the run's seed
    reorthogonalize: bool | str = True  # full re-orthogonalisation in SLQ; "partial": only when Simon's estimate
                                     # of the lost orthogonality passes sqrt(eps) (cheaper at scale, as
                                     # accurate); false: none (spurious copies of converged Ritz values)
    checkpoint_every: int = 8        # save the Lanczos state every this many steps (0 = never); a killed
                                     # spectrum stage resumes from it with identical Ritz values
    matrix: str = "hessian"          # "hessian" (the paper's) or "gauss_newton" (J^T H_out J: PSD, caches only
                                     # forward graphs; differs from H away from a minimum; docs/HESSIAN.md)
    basis_device: str = "auto"       # Lanczos basis: "same" (the model's device), "cpu" (host memory, streamed
                                     # a row at a time) or "auto" (host memory when the GPU lacks free room)
    masks: str | None = None         # a mask file (.safetensors; .npy needs --allow-pickle): also the spectrum
                                     # of the Hessian restricted to the weights it keeps (spectrum_pruned.json)
    parameters: str = "prunable"     # what the Hessian differentiates: "prunable" (the paper's convention: weights
                                     # and biases of prunable layers; norm layers, embeddings and weights tied to
                                     # an embedding left out) or "all" (every trainable parameter)

    def __post_init__(self):
        def positive_int(key: str, minimum: int = 1):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise PrunelimitError(f"spectrum.{key}={value!r} must be an integer >= {minimum}")

        for key in ("lanczos_iter", "lanczos_num", "top_k", "row_quantiles"):
            positive_int(key)
        positive_int("trace_samples", 0)
        positive_int("density_points", 2)
        if self.seed is not None:
            positive_int("seed", 0)
        positive_int("checkpoint_every", 0)
        if self.density_sigma is not None and not (isinstance(self.density_sigma, (int, float))
                                                   and self.density_sigma > 0):
            raise PrunelimitError(f"spectrum.density_sigma={self.density_sigma!r} must be a positive number "
                             "or null for the default (1 % of the spectrum's range)")
        if self.density_kernel not in DENSITY_KERNELS:
            raise PrunelimitError(f"spectrum.density_kernel={self.density_kernel!r} is not one of {DENSITY_KERNELS}")
        if not isinstance(self.important_eigs, bool):
            raise PrunelimitError(f"spectrum.important_eigs={self.important_eigs!r} must be true or false")
        if not (isinstance(self.row_threshold, (int, float)) and self.row_threshold > 0):
            raise PrunelimitError(f"spectrum.row_threshold={self.row_threshold!r} must be a positive number")
        if isinstance(self.cache_graph, bool):  # YAML true/false
            object.__setattr__(self, "cache_graph", "true" if self.cache_graph else "false")  # frozen
        if str(self.cache_graph).lower() not in CACHE_GRAPH_MODES:
            raise PrunelimitError(f"spectrum.cache_graph={self.cache_graph!r} must be one of {CACHE_GRAPH_MODES}")
        object.__setattr__(self, "cache_graph", str(self.cache_graph).lower())
        if isinstance(self.batched_probes, bool):  # YAML true/false
            object.__setattr__(self, "batched_probes", "true" if self.batched_probes else "false")  # frozen
        if str(self.batched_probes).lower() not in BATCHED_PROBES_MODES:
            raise PrunelimitError(f"spectrum.batched_probes={self.batched_probes!r} must be one of "
                                  f"{BATCHED_PROBES_MODES} (auto: the CPU loops over the probes, CUDA vmaps them)")
        object.__setattr__(self, "batched_probes", str(self.batched_probes).lower())
        if self.memory_budget is not None:
            from prunelimit.spectrum.memory import check_budget_setting, resolve_budget

            try:
                resolve_budget(self.memory_budget, "cpu")  # checks the value; the device's memory is read later
                check_budget_setting(self.memory_budget)
            except PrunelimitError as err:
                raise PrunelimitError(f"spectrum.{err}") from None
        if self.hessian_batch_size is not None:
            positive_int("hessian_batch_size")
        if not (isinstance(self.reorthogonalize, bool) or self.reorthogonalize == "partial"):
            raise PrunelimitError(f"spectrum.reorthogonalize={self.reorthogonalize!r} must be true (full), false "
                                  "or 'partial' (only where the estimated loss of orthogonality needs it)")
        if not isinstance(self.lean_graphs, bool):
            raise PrunelimitError(f"spectrum.lean_graphs={self.lean_graphs!r} must be true or false")
        if self.matrix not in MATRICES:
            raise PrunelimitError(f"spectrum.matrix={self.matrix!r} is not one of {MATRICES}")
        if self.matrix == "gauss_newton" and self.batched_probes == "true":
            raise PrunelimitError("spectrum.batched_probes=true applies to the Hessian's double backward; the "
                                  "Gauss-Newton product (spectrum.matrix=gauss_newton) always loops over the "
                                  "probes: set batched_probes to auto or false, or matrix to hessian")
        if self.basis_device not in BASIS_DEVICES:
            raise PrunelimitError(f"spectrum.basis_device={self.basis_device!r} is not one of {BASIS_DEVICES}")
        if self.masks is not None and not (isinstance(self.masks, str) and self.masks.strip()):
            raise PrunelimitError(f"spectrum.masks={self.masks!r} must be the path of a mask file "
                                  f"(e.g. run/gp/weight_mask.safetensors) or null")

        if self.parameters not in PARAMETER_SETS:
            raise PrunelimitError(f"spectrum.parameters={self.parameters!r} is not one of {PARAMETER_SETS} (prunable: "
                                  f"the weights and biases of prunable layers, the paper's convention; all: every "
                                  f"trainable parameter, norm layers and embeddings included)")

    def cache_graph_arg(self) -> bool | str:
        """The value HessianOperator(cache_graph=...) expects."""
        return {"auto": "auto", "true": True, "false": False}[self.cache_graph]

    def batched_probes_arg(self) -> bool | str:
        """The value HessianOperator(batched_probes=...) expects."""
        return {"auto": "auto", "true": True, "false": False}[self.batched_probes]
