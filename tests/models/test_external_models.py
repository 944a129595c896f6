"""Any importable model from the CLI and the API: torchvision:NAME, timm:NAME, module:factory, coverage."""
import pytest

from prunelimit import create_model
from prunelimit.cli.main import main
from prunelimit.pruning import load_masks


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def test_create_importable_models_with_kwargs():
    m = create_model("torchvision:resnet18", num_classes=7)
    assert m.fc.out_features == 7
    m = create_model("timm:convnext_atto", num_classes=5, depths=(1, 1, 1, 1))
    assert m.get_classifier().out_features == 5 and len(m.stages[0].blocks) == 1
    m = create_model("tests.userpkg.nets:make_net", num_classes=4, width=9)
    assert m[1].out_features == 9 and m[3].out_features == 4


@pytest.mark.parametrize("spec, message", [
    ("torchvision:resnet181", "torchvision has no model 'resnet181' (did you mean 'resnet18'?)"),
    ("timm:convnext_atoo", "timm has no model 'convnext_atoo' (did you mean 'convnext_atto'?)"),
    ("nosuchpkg.mod:f", "cannot import 'nosuchpkg.mod'"),
    ("tests.userpkg.nets:make_nett", "has no callable 'make_nett' (did you mean 'make_net'?)"),
    ("a:b:c", "one ':' between a source and a name"),
])
def test_bad_model_specs_are_one_line_errors(spec, message):
    with pytest.raises(ValueError) as e:
        create_model(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_kwargs_and_factory_bugs():
    with pytest.raises(ValueError, match="does not accept the arguments \\['depthh'\\]"):
        create_model("tests.userpkg.nets:make_net", depthh=3)
    with pytest.raises(TypeError, match="a bug inside the factory"):  # a real bug keeps its traceback
        create_model("tests.userpkg.nets:broken_net")


def test_cli_coverage_and_prune_with_an_imported_model(tmp_path, capsys):
    assert run_cli("coverage", "--model", "timm:vit_tiny_patch16_224", "--model-arg", "img_size=32",
                   "--model-arg", "patch_size=8", "--model-arg", "depth=1") == 0
    text = capsys.readouterr().out
    assert "coverage: 6 prunable parameters" in text and "pos_embed [1, 17, 192]" in text
    out = tmp_path / "run"
    assert run_cli("prune", "--model", "tests.userpkg.nets:make_net", "--model-arg", "width=6",
                   "--num-classes", "3", "--sparsity", "0.5", "--out", out, "--no-progress") == 0
    text = capsys.readouterr().out
    assert "coverage: 2 prunable parameters, 402 weights; 100.0 %" in text
    masks = load_masks(out / "gp" / "weight_mask.safetensors")
    assert list(masks) == ["1.weight", "3.weight"] and sum(int((~m).sum()) for m in masks.values()) == 201
    assert run_cli("coverage", "--model", "tests.userpkg.nets:make_net", "--model-arg", "width") == 2
    assert "--model-arg 'width' must be KEY=VALUE" in capsys.readouterr().err
