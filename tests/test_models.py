"""The zoo: shapes, seeded init, and pruned outputs loading into the unmodified classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from prunecli import __version__
from prunecli.io.checkpoints import load_state_dict
from prunecli.models.zoo import ZOO, build_model, input_shape


@pytest.mark.parametrize("arch", ["lenet-300-100", "lenet-5", "vgg16", "resnet20"])
def test_forward_shapes(arch: str) -> None:
    model = build_model(arch).eval()
    assert model(torch.zeros(2, *input_shape(arch))).shape == (2, 10)


@pytest.mark.parametrize("arch", ["lenet-300-100", "lenet-5"])
def test_flat_mnist_input_works(arch: str) -> None:
    assert build_model(arch)(torch.zeros(3, 784)).shape == (3, 10)


def test_parameter_counts_match_the_papers() -> None:
    counts = {a: sum(p.numel() for p in build_model(a).parameters()) for a in ZOO}
    assert counts["lenet-300-100"] == 266_610
    assert counts["lenet-5"] == 431_080  # Caffe LeNet-5: 20/50 convs, 500 hidden
    assert 0.26e6 < counts["resnet20"] < 0.28e6
    assert 14.7e6 < counts["vgg16"] < 14.8e6


@pytest.mark.parametrize("scheme", ["kaiming-normal", "xavier-normal", "xavier-uniform", "orthogonal"])
def test_init_is_seeded_and_recorded(cli, tmp_path: Path, scheme: str) -> None:
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for path, seed in zip(paths, (1, 1, 2), strict=True):
        r = cli("init", "--arch", "lenet-5", "--init", scheme, "--seed", seed, "-o", path)
        assert r.code == 0, r.err
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    with safe_open(paths[0], "np") as f:
        meta = f.metadata()
    assert meta == {
        "format": "prunecli.init",
        "arch": "lenet-5",
        "init": scheme,
        "seed": "1",
        "input_shape": "1x28x28",
        "prunecli_version": __version__,
    }


def test_kaiming_normal_scale() -> None:
    from prunecli.models.init import initialize

    model = initialize(build_model("lenet-300-100"), "kaiming-normal", seed=0)
    std = model.fc1.weight.std().item()
    assert std == pytest.approx((2 / 784) ** 0.5, rel=0.02)
    assert not model.fc1.bias.any()


@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
def test_pruned_output_loads_into_the_model(cli, tmp_path: Path, arch: str) -> None:
    init = tmp_path / "init.safetensors"
    assert cli("init", "--arch", arch, "-o", init).code == 0
    r = cli("apply", init, "-m", "magnitude", "-s", "0.9", "-o", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    manifest = json.loads(r.out)
    totals = manifest["totals"]
    counts = f"kept {totals['kept']:,} of {totals['prunable']:,}"
    assert r.err == f"note: wrote {tmp_path / 'out'}: {counts} (sparsity 0.9000)\n"
    model = build_model(arch)
    written = load_state_dict(tmp_path / "out" / "model.safetensors")
    model.load_state_dict(written, strict=True)
    source = load_state_dict(init)
    pruned = [t["name"] for t in manifest["tensors"] if t["pruned"]]
    assert all(n.endswith("weight") for n in pruned) and not any("bn" in n for n in pruned)
    assert totals["kept"] == round(totals["prunable"] * 0.1)
    # the model now holds exactly the file's tensors; pruned ones keep `kept` of the source's
    # values and zero the rest, the others are the source's, bit for bit
    state = model.state_dict()
    assert list(state) == [t["name"] for t in manifest["tensors"]] == list(source)
    for t in manifest["tensors"]:
        name = t["name"]
        assert torch.equal(state[name], written[name]), name
        if t["pruned"]:
            kept = state[name] != 0
            assert int(kept.sum()) == t["kept"], name
            assert torch.equal(state[name][kept], source[name][kept]), name
        else:
            assert torch.equal(state[name], source[name]), name
    assert model(torch.zeros(1, *input_shape(arch))).shape == (1, 10)
