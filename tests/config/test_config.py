"""Config loading: every shipped config, the original sample as-is, errors that name the key."""
from __future__ import annotations

import textwrap

import pytest

from prunelimit.config import ConfigError, load_config, shipped_configs
from prunelimit.train import GP_FINETUNE_DEFAULTS

# The sample config of the limit paper's README, verbatim.
ORIGINAL_SAMPLE = """\
model: AlexNet
init: kaiming_normal
data_path: "datasets/"
dataset: cifar10

use_full_data: True

batch_size: 128
gpu: 0

criterion: cross_entropy

optim: sgd
lr: 0.01
momentum: 0.9
weight_decay: 0 
gamma: 0.5

warm: 5
schedu: True
schedumode: multistep
milestones: [60, 120, 160]

epoch: 200
l1: True
lmbda: 0.00003
regularizer: L1
mode: train
sparse: True
sparse_epoch: 1000

file_path: ' '

save_model: True

lanczos_iter: 96
lanczos_num: 1
"""


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_loads(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.pipeline in ("default", "gp", "limit")
    if cfg.pipeline in ("default", "limit"):
        # the limit paper's init, as every one of its original configs (and the seed's sample) says
        assert cfg.model.init == "kaiming_normal"


def test_original_sample_maps_onto_sections(tmp_path):
    cfg = load_config(write(tmp_path, ORIGINAL_SAMPLE))
    assert cfg.pipeline == "limit"
    assert cfg.model.name == "alexnet" and cfg.model.init == "kaiming_normal" and cfg.model.checkpoint is None
    assert cfg.data.dataset == "cifar10" and cfg.data.data_path == "datasets/" and cfg.data.use_full_data
    t = cfg.train
    assert (t.batch_size, t.lr, t.momentum, t.weight_decay, t.gamma) == (128, 0.01, 0.9, 0.0, 0.5)
    assert (t.warmup_epochs, t.schedule, t.milestones, t.epochs) == (5, "multistep", [60, 120, 160], 200)
    assert t.l1_lambda == pytest.approx(3e-5) and t.criterion == "cross_entropy"
    assert cfg.limit.sweep_points == 1000 and cfg.stages.sweep and cfg.stages.train
    assert (cfg.spectrum.lanczos_iter, cfg.spectrum.lanczos_num) == (96, 1)
    assert cfg.spectrum.important_eigs  # the original computes q for AlexNet
    assert cfg.gpu == 0


@pytest.mark.parametrize("flat,expect", [
    ({"l1": False, "lmbda": 5e-5}, ("l1_lambda", 0.0)),
    ({"schedu": False, "schedumode": "cos"}, ("schedule", "none")),
    ({"schedu": True, "schedumode": "cos"}, ("schedule", "cosine")),
    ({"lmbda": "3e-05", "l1": True}, ("l1_lambda", 3e-5)),  # YAML 1.1 reads 3e-05 as a string
])
def test_original_flat_logic(tmp_path, flat, expect):
    import yaml

    cfg = load_config(write(tmp_path, yaml.safe_dump({"model": "FC", "dataset": "mnist", **flat})))
    assert getattr(cfg.train, expect[0]) == pytest.approx(expect[1]) if isinstance(expect[1], float) \
        else getattr(cfg.train, expect[0]) == expect[1]
    assert not cfg.spectrum.important_eigs  # FC nets: q = 0 in the original


def test_file_path_becomes_checkpoint_and_eval_mode(tmp_path):
    cfg = load_config(write(tmp_path, "model: FC\ndataset: mnist\nmode: eval\nfile_path: /x/model.pth\n"))
    assert cfg.model.checkpoint == "/x/model.pth" and cfg.stages.train is False


@pytest.mark.parametrize("text,needle", [
    ("lanczos_itr: 96\n", "did you mean 'lanczos_iter'"),
    ("train:\n  lrr: 0.1\n", "did you mean 'lr'"),
    ("trian:\n  lr: 0.1\n", "did you mean 'train'"),
    ("train:\n  epochs: ten\n", "train.epochs"),
    ("model:\n  name: resnet5\n", "resnet5"),
    ("data:\n  dataset: cifar11\n", "cifar11"),
    ("schedumode: sawtooth\nmodel: FC\n", "schedumode"),
    ("prune:\n  sparsity: 1.5\n", "sparsity"),
    ("train: 3\n", "section 'train' must be a mapping"),
    ("- a\n- b\n", "must be a mapping"),
    ("lr: 0.1\ntrain:\n\tlr: 0.1\n", "line 3"),
])
def test_errors_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert needle in str(e.value)
    assert "c.yaml" in str(e.value)


@pytest.mark.parametrize("override, section, key", [
    ("spectrum.top_k=0", "spectrum", "spectrum.top_k=0"),
    ("prune.sparsity=2", "prune", "prune.sparsity=2"),
    ("train.epochs=-1", "train", "train config key 'epochs'"),
])
def test_a_section_check_that_names_its_key_is_not_prefixed_with_the_section_again(override, section, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    message = str(e.value)
    assert key in message and f"{section}: {section}" not in message
    # a message that does not name its section keeps the prefix
    with pytest.raises(ConfigError, match=r": data: unknown key 'batch_size'"):
        load_config(None, ["data.batch_size=3"])


def test_missing_config_suggests_shipped(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'FC_CIFAR10'"):
        load_config("FC_CIFAR1")


def test_overrides(tmp_path):
    cfg = load_config(None, ["train.lr=0.5", "lmbda=1e-4", "l1=true", "seed=3", "data=null", "pipeline=gp",
                                 "gp.sparsity_from=config"])
    assert cfg.train.lr == 0.5 and cfg.train.l1_lambda == pytest.approx(1e-4) and cfg.seed == 3
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(None, ["trian.lr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])


def test_data_null_means_no_dataset(tmp_path):
    cfg = load_config(write(tmp_path, "pipeline: gp\ndata: null\n"))
    assert cfg.data is None


def test_finetune_defaults_are_the_gp_recipe(tmp_path):
    cfg = load_config(write(tmp_path, "pipeline: gp\n"))
    f = cfg.finetune
    for key, value in GP_FINETUNE_DEFAULTS.items():
        assert getattr(f, key) == pytest.approx(value) if isinstance(value, float) else getattr(f, key) == value


@pytest.mark.parametrize("written, mode, arg", [("true", "true", True), ("false", "false", False),
                                                ("auto", "auto", "auto"), ("'True'", "true", True)])
def test_batched_probes_takes_yaml_booleans_like_cache_graph(tmp_path, written, mode, arg):
    from_file = load_config(write(tmp_path, f"spectrum:\n  batched_probes: {written}\n")).spectrum
    from_override = load_config(None, [f"spectrum.batched_probes={written}"]).spectrum
    for s in (from_file, from_override):
        assert s.batched_probes == mode and s.batched_probes_arg() == arg
    assert load_config(None).spectrum.batched_probes_arg() == "auto"   # the operator picks by device


@pytest.mark.parametrize("override, needle", [
    ("spectrum.batched_probes=sometimes", "spectrum.batched_probes='sometimes' must be one of ('auto', 'true', 'false')"),
    ("spectrum.batched_probes=yes please", "spectrum.batched_probes='yes please' must be one of"),
    ("spectrum.batched_probes=1", "spectrum.batched_probes: value 1 has the wrong type; expected str or bool"),
])
def test_batched_probes_refuses_other_values_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_batched_probes_true_is_refused_for_the_gauss_newton_matrix():
    """The Gauss-Newton product has no vmap'd path: asking for it must not be silently ignored."""
    with pytest.raises(ConfigError, match="spectrum.batched_probes=true applies to the Hessian") as e:
        load_config(None, ["spectrum.matrix=gauss_newton", "spectrum.batched_probes=true"])
    assert "batched_probes to auto or false" in str(e.value)
    for mode in ("auto", "false"):
        assert load_config(None, ["spectrum.matrix=gauss_newton", f"spectrum.batched_probes={mode}"])
