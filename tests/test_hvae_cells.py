"""HierarchicalVAEModel's cell_type option and the residual cells of hfgen.models.blocks (tiny configs, CPU)."""

import json

import pytest
import torch

from hfgen import HierarchicalVAEModel
from hfgen.families import HVAEFamily
from hfgen.models.blocks import (CELL_TYPES, BottleneckBlock, InvertedResidualBlock, ResidualBlock, check_cell_type,
                                 residual_cell)
from hfgen.training import build_parser, resolve_config

# cells in every place: bottom-up stages, top-down groups and the output cells
TINY = dict(sample_size=16, block_out_channels=[8, 8, 16], groups_per_scale=[1, 1, 2], latent_channels=2,
            encoder_blocks_per_scale=1, decoder_blocks_per_group=1, output_blocks=1)
CELL_CLASSES = {"resnet": ResidualBlock, "bottleneck": BottleneckBlock, "inverted_residual": InvertedResidualBlock}


def _images(n=4, size=16, seed=0):
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _fresh(seed=0, **overrides):
    torch.manual_seed(seed)
    return HierarchicalVAEModel(**{**TINY, **overrides})


def _perturbed(seed=0, **overrides):
    """A tiny model with its zero-initialised layers perturbed, so that every cell's residual branch matters."""
    model = _fresh(seed, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _cells(model):
    return [m for m in model.modules() if isinstance(m, tuple(CELL_CLASSES.values()))]


def test_default_is_resnet_bit_for_bit():
    default, explicit = _fresh(3), _fresh(3, cell_type="resnet")
    assert default.config.cell_type == "resnet"
    assert all(type(cell) is ResidualBlock for cell in _cells(default))
    a, b = default.state_dict(), explicit.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = _images()
    assert torch.equal(default(x, generator=_gen()).loss, explicit(x, generator=_gen()).loss)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@pytest.mark.parametrize("use_squeeze_excitation", [False, True])
def test_every_cell_type_builds_everywhere_and_trains(cell_type, use_squeeze_excitation):
    model = _fresh(cell_type=cell_type, use_squeeze_excitation=use_squeeze_excitation).train()
    cells = _cells(model)
    # 3 bottom-up stages + 4 groups + 1 output cell, all of the asked-for kind
    assert len(cells) == 3 + 4 + 1 and all(type(c) is CELL_CLASSES[cell_type] for c in cells)
    out = model(_images(), generator=_gen(), kl_weight=0.5)
    assert torch.isfinite(out.loss) and torch.isfinite(out.elbo).all()
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # the zero-initialised last convs of the top-down and output cells get a gradient, so their branches leave the
    # identity at the first step (the bottom-up cells get theirs once the zero-initialised posteriors have moved)
    last_convs = {"resnet": "conv2", "bottleneck": "expand", "inverted_residual": "project"}[cell_type]
    top_down = _cells(model.groups) + _cells(model.output_cells)
    assert len(top_down) == 4 + 1
    assert all(getattr(c, last_convs).weight.grad.abs().sum() > 0 for c in top_down)
    assert all(torch.equal(getattr(c, last_convs).weight, torch.zeros_like(getattr(c, last_convs).weight))
               for c in cells)  # built at zero


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_fresh_cells_are_the_identity_on_their_residual_path(cell_type):
    x = torch.randn(2, 8, 8, 8, generator=_gen(1))
    cells = _cells(_fresh(cell_type=cell_type, use_squeeze_excitation=True))
    assert cells
    for cell in cells:
        width = next(m for m in cell.modules() if isinstance(m, torch.nn.Conv2d)).in_channels  # the input width
        y = torch.randn(2, width, 4, 4, generator=_gen(2))
        assert torch.equal(cell(y), y)
    # widths that differ: the projected skip alone
    torch.manual_seed(0)
    cell = residual_cell(cell_type, 8, 16, use_squeeze_excitation=False)
    assert torch.equal(cell(x), cell.skip(x)) and cell(x).shape == (2, 16, 8, 8)


@pytest.mark.parametrize("cell_type", ["bottleneck", "inverted_residual"])
def test_round_trip_keeps_cell_type_and_outputs(tmp_path, cell_type):
    model = _perturbed(cell_type=cell_type)
    model.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["cell_type"] == cell_type
    loaded = HierarchicalVAEModel.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.cell_type == cell_type and all(type(c) is CELL_CLASSES[cell_type] for c in _cells(loaded))
    x = _images()
    with torch.no_grad():  # the same weights; a loaded copy may pick other kernels: float32 rounding, not bits
        torch.testing.assert_close(model(x, generator=_gen()).elbo, loaded(x, generator=_gen()).elbo,
                                   rtol=1e-5, atol=0)


def test_config_saved_without_cell_type_loads_as_resnet(tmp_path):
    model = _perturbed()
    model.save_pretrained(tmp_path / "model")
    config_path = tmp_path / "model" / "config.json"
    config = json.loads(config_path.read_text())
    del config["cell_type"]  # a folder saved before the option existed
    config_path.write_text(json.dumps(config))
    loaded = HierarchicalVAEModel.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.cell_type == "resnet" and all(type(c) is ResidualBlock for c in _cells(loaded))
    x = _images()
    with torch.no_grad():  # the same weights; a loaded copy may pick other kernels: float32 rounding, not bits
        torch.testing.assert_close(model(x, generator=_gen()).elbo, loaded(x, generator=_gen()).elbo,
                                   rtol=1e-5, atol=0)


def test_unknown_cell_type_is_refused_before_anything_is_built():
    with pytest.raises(ValueError, match=r"cell_type must be one of .*'resnet'.*got 'convnext'"):
        HierarchicalVAEModel(cell_type="convnext")
    # also when the config has no residual cell at all
    with pytest.raises(ValueError, match="'convnext'"):
        HierarchicalVAEModel(**{**TINY, "encoder_blocks_per_scale": 0, "decoder_blocks_per_group": 0,
                                "output_blocks": 0}, cell_type="convnext")
    with pytest.raises(ValueError, match="'ResNet'"):
        residual_cell("ResNet", 8, 8)
    assert check_cell_type("bottleneck") == "bottleneck"


@pytest.mark.parametrize("cell_type", ["bottleneck", "inverted_residual"])
def test_gradient_checkpointing_gives_the_same_gradients(cell_type):
    model = _perturbed(cell_type=cell_type).train()
    x = _images()
    model(x, generator=_gen()).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(x, generator=_gen()).loss.backward()
    for a, p in zip(plain, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_cell_type_flag_reaches_the_model_and_leaves_the_preset_alone():
    family = HVAEFamily()
    parser = build_parser(family)
    _, model_config = resolve_config(parser.parse_args(["--output_dir", "x", "--preset", "tiny"]), family)
    assert "cell_type" not in model_config
    assert family.build_model(model_config, 1, 16).config.cell_type == "resnet"
    for cell_type in CELL_TYPES:
        args = parser.parse_args(["--output_dir", "x", "--preset", "tiny", "--cell_type", cell_type])
        _, model_config = resolve_config(args, family)
        assert model_config["cell_type"] == cell_type
        assert family.build_model(model_config, 1, 16).config.cell_type == cell_type
    with pytest.raises(SystemExit):
        parser.parse_args(["--output_dir", "x", "--cell_type", "convnext"])
