"""Masks on live modules: loading apply's bit-packed masks, and holding pruned weights at zero.

Every model here is pruned by `prunecli apply` in-process; the training loops check exact +0 in
the pruned entries after every `optimizer.step()`, before the next forward can re-zero them.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from prunecli.errors import InputError, ManifestError
from prunecli.io.checkpoints import save_state_dict
from prunecli.io.safetensors_file import write_arrays
from prunecli.training.masks import (
    MASK_PREFIX,
    attach_masks,
    attached_masks,
    detach_masks,
    is_masked,
    load_masks,
    read_masks,
    reapply_masks,
)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 20)
        self.fc2 = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class ConvNet(nn.Module):
    """Conv weights of 135 and 315 entries: not multiples of 8, so the packed bits are trimmed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3)
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 7, 3)
        self.fc = nn.Linear(7 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, 8, 8)
        x = torch.relu(self.bn1(self.conv1(x)))  # (N, 5, 6, 6)
        x = torch.relu(self.conv2(x))  # (N, 7, 4, 4)
        return self.fc(x.flatten(1))


@dataclass
class Pruned:
    """A seeded model class, its checkpoint, and the output of `apply --sparsity 0.8 --scope layer`.

    Layer scope keeps and prunes entries in every layer (global scope collapses the MLP's fc2).
    """

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    ckpt: Path
    out: Path

    def model(self) -> nn.Module:
        torch.manual_seed(0)
        return self.build()

    def batch(self, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, *self.input_shape), torch.randint(0, 3, (n,))


ARCHS = {"mlp": (MLP, (12,)), "conv": (ConvNet, (3, 8, 8))}


@pytest.fixture(params=list(ARCHS))
def pruned(request: pytest.FixtureRequest, tmp_path: Path, cli) -> Pruned:
    build, shape = ARCHS[request.param]
    p = Pruned(build, shape, tmp_path / "init.safetensors", tmp_path / "out")
    save_state_dict(p.model().state_dict(), p.ckpt, {})
    r = cli(
        "apply", p.ckpt, "--method", "magnitude", "--sparsity", "0.8", "--scope", "layer", "-o", p.out, "-q"
    )
    assert r.code == 0, r.err
    masks = load_masks(p.out)
    assert set(masks) == {n for n, v in p.model().named_parameters() if v.ndim >= 2}
    assert all(0 < int(m.sum()) < m.numel() for m in masks.values())  # each layer keeps and prunes
    return p


def pruned_entries(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        n: model.get_parameter(n).detach()[~m.to(model.get_parameter(n).device)] for n, m in masks.items()
    }


def assert_pruned_exact_zero(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for name, values in pruned_entries(model, masks).items():
        assert bool((values == 0).all()), f"{name}: {int((values != 0).sum())} pruned weights revived"
        assert not bool(values.signbit().any()), f"{name}: -0.0 in pruned entries"


def train(p: Pruned, model: nn.Module, optimizer: torch.optim.Optimizer, masks, steps: int = 6) -> None:
    """Train on random data, checking gradients and weights around every step."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x, y = p.batch()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x.to(device, dtype)), y.to(device)).backward()
        for name, keep in masks.items():
            grad = model.get_parameter(name).grad
            assert bool((grad[~keep.to(device)] == 0).all()), f"{name}: gradient of pruned weights"
        optimizer.step()
        assert_pruned_exact_zero(model, masks)  # before the next forward can re-zero anything


OPTIMIZERS = {
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.05),
    "sgd-nesterov-wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
    "adam-wd": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.05),
    "adam-amsgrad-loop": lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True, foreach=False),
    "adamw-wd": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.5),
}


# ------------------------------------------------------------------------------- load_masks


def test_folder_and_manifest_give_the_same_masks_matching_apply(pruned: Pruned) -> None:
    from_folder = load_masks(pruned.out)
    from_manifest = load_masks(str(pruned.out / "manifest.json"))
    manifest = json.loads((pruned.out / "manifest.json").read_text())
    records = {r["name"]: r for r in manifest["tensors"] if r["pruned"]}
    weights = load_file(pruned.out / "model.safetensors")
    assert set(from_folder) == set(from_manifest) == set(records) and records
    for name, mask in from_folder.items():
        assert mask.dtype == torch.bool and list(mask.shape) == records[name]["shape"]
        assert torch.equal(mask, from_manifest[name])
        assert int(mask.sum()) == records[name]["kept"]
        assert np.all(weights[name][~mask.numpy()] == 0)  # the pruned entries of model.safetensors


def test_read_masks_is_numpy_and_imports_no_torch(pruned: Pruned) -> None:
    masks = read_masks(pruned.out)
    assert all(m.dtype == np.bool_ for m in masks.values())
    probe = (
        "import sys; from prunecli.training.masks import read_masks; "
        f"m = read_masks({str(pruned.out)!r}); assert m; print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_load_masks_from_a_mapping() -> None:
    masks = load_masks(
        {"a": np.array([[0, 1], [1, 0]]), "b": torch.tensor([1.0, 0.0]), "c": torch.tensor([True])}
    )
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [True, False] and masks["c"].tolist() == [True]
    with pytest.raises(InputError, match="'b' holds values other than 0 and 1") as exc:
        load_masks({"b": torch.tensor([0.5, 1.0])})
    assert exc.value.hint
    with pytest.raises(TypeError):
        load_masks(3)


def test_missing_masks_file(pruned: Pruned) -> None:
    (pruned.out / "masks.safetensors").unlink()
    with pytest.raises(InputError, match=r"masks file .*masks\.safetensors named by .* is missing") as exc:
        load_masks(pruned.out / "manifest.json")
    assert "masks.safetensors" in exc.value.hint


def test_mask_whose_size_does_not_match_the_manifest(pruned: Pruned) -> None:
    masks_path = pruned.out / "masks.safetensors"
    raw = load_file(masks_path)
    name = next(iter(raw))
    raw[name] = raw[name][:-1]  # one byte short
    write_arrays(masks_path, {k: ("U8", v) for k, v in raw.items()}, {})
    with pytest.raises(ManifestError, match=f"the mask of '{name}'.*needs") as exc:
        load_masks(pruned.out)
    assert "rerun" in exc.value.hint


def test_mask_missing_from_the_masks_file(pruned: Pruned) -> None:
    masks_path = pruned.out / "masks.safetensors"
    raw = load_file(masks_path)
    name = next(iter(raw))
    del raw[name]
    write_arrays(masks_path, {k: ("U8", v) for k, v in raw.items()}, {})
    with pytest.raises(ManifestError, match=f"has no mask for '{name}'"):
        load_masks(pruned.out)


def test_bad_sources(tmp_path: Path, pruned: Pruned) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_masks(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"has no manifest\.json") as exc:
        load_masks(tmp_path / "empty")
    assert exc.value.hint
    with pytest.raises(InputError, match="is not a manifest") as exc:
        load_masks(pruned.out / "masks.safetensors")
    assert "manifest.json" in exc.value.hint


# ------------------------------------------------------------------------- attach_masks


def test_attach_zeroes_at_once_and_matches_apply_output(pruned: Pruned) -> None:
    model = pruned.model()
    masks = load_masks(pruned.out)
    assert any(bool((v != 0).any()) for v in pruned_entries(model, masks).values())
    assert attach_masks(model, pruned.out) is model and is_masked(model)
    assert_pruned_exact_zero(model, masks)
    expected = load_file(pruned.out / "model.safetensors")
    state = model.state_dict()
    assert set(state) == set(expected)
    for name, tensor in state.items():  # bit for bit what apply wrote, +0 included
        assert np.array_equal(
            tensor.numpy().reshape(-1).view(np.uint8), expected[name].reshape(-1).view(np.uint8)
        ), name


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_through_training(pruned: Pruned, optimizer: str) -> None:
    model = attach_masks(pruned.model(), pruned.out / "manifest.json")
    masks = load_masks(pruned.out)
    kept_before = {n: model.get_parameter(n).detach()[m].clone() for n, m in masks.items()}
    train(pruned, model, OPTIMIZERS[optimizer](model.parameters()), masks)
    for name, keep in masks.items():
        assert not torch.equal(model.get_parameter(name).detach()[keep], kept_before[name]), name


def test_two_forwards_before_one_backward(pruned: Pruned) -> None:
    model = attach_masks(pruned.model(), pruned.out)
    masks = load_masks(pruned.out)
    # the reference: the same class holding apply's masked weights, with no masks attached
    plain = pruned.model()
    plain.load_state_dict(
        {k: torch.from_numpy(v) for k, v in load_file(pruned.out / "model.safetensors").items()}
    )
    (x1, _), (x2, _) = pruned.batch(), pruned.batch()
    (model(x1).sum() + model(x2).sum()).backward()  # re-zeroing must not invalidate the graph
    (plain(x1).sum() + plain(x2).sum()).backward()
    for name, param in model.named_parameters():
        expected = plain.get_parameter(name).grad
        if name in masks:  # the gradient of a pruned weight is zeroed, the others are untouched
            expected = torch.where(masks[name], expected, torch.zeros_like(expected))
        assert torch.equal(param.grad, expected), name
    assert_pruned_exact_zero(model, masks)
    with torch.inference_mode():
        assert torch.equal(model(x1), plain(x1))


def test_state_dict_keys_unchanged_and_loads_both_ways(pruned: Pruned) -> None:
    plain = pruned.model()
    masked = attach_masks(pruned.model(), pruned.out)
    assert list(masked.state_dict()) == list(plain.state_dict())
    assert not any(MASK_PREFIX in k for k in masked.state_dict())
    plain.load_state_dict(masked.state_dict())  # strict: a masked model's weights load anywhere
    assert_pruned_exact_zero(plain, load_masks(pruned.out))
    masked.load_state_dict(pruned.model().state_dict())  # strict, and dense
    assert_pruned_exact_zero(masked, load_masks(pruned.out))


@pytest.mark.parametrize("assign", [False, True])
def test_loading_a_dense_state_dict_reapplies_masks(pruned: Pruned, assign: bool) -> None:
    model = attach_masks(pruned.model(), pruned.out)
    masks = load_masks(pruned.out)
    dense = {k: v + 1.0 if v.is_floating_point() else v for k, v in pruned.model().state_dict().items()}
    model.load_state_dict(dense, assign=assign)
    assert_pruned_exact_zero(model, masks)
    for name, keep in masks.items():
        assert torch.equal(model.get_parameter(name).detach()[keep], dense[name][keep])
    # assign=True makes new parameter objects: the gradient hook must follow them
    train(pruned, model, OPTIMIZERS["sgd-momentum-wd"](model.parameters()), masks)


def test_deepcopy_is_masked_with_its_own_masks(pruned: Pruned) -> None:
    model = attach_masks(pruned.model(), pruned.out)
    masks = load_masks(pruned.out)
    clone = copy.deepcopy(model)
    assert is_masked(clone)
    ours, theirs = attached_masks(model), attached_masks(clone)
    assert set(ours) == set(theirs) == set(masks)
    for name in masks:
        assert torch.equal(ours[name], theirs[name]) and ours[name].data_ptr() != theirs[name].data_ptr()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # first thing after the copy: train it (its parameters are new objects without tensor hooks)
    train(pruned, clone, OPTIMIZERS["sgd-momentum-wd"](clone.parameters()), masks)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # original untouched
    clone.load_state_dict(pruned.model().state_dict())  # the copy's load hook is its own
    assert_pruned_exact_zero(clone, masks)
    attach_masks(model, {n: torch.ones_like(m) for n, m in masks.items()})  # the copy must not see this
    train(pruned, clone, OPTIMIZERS["adamw-wd"](clone.parameters()), masks)
    detach_masks(clone)
    assert is_masked(model) and not is_masked(clone)
    attach_masks(model, masks)
    train(pruned, model, OPTIMIZERS["adamw-wd"](model.parameters()), masks)


def test_pickled_model_stays_masked(pruned: Pruned) -> None:
    model = attach_masks(pruned.model(), pruned.out)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert is_masked(loaded)
    train(pruned, loaded, OPTIMIZERS["sgd-momentum-wd"](loaded.parameters()), load_masks(pruned.out))


def test_to_float64_moves_masks_and_keeps_them(pruned: Pruned) -> None:
    model = attach_masks(pruned.model(), pruned.out).to(torch.float64)
    masks = load_masks(pruned.out)
    assert all(m.dtype == torch.bool for m in attached_masks(model).values())
    assert all(p.dtype == torch.float64 for p in model.parameters())
    model.load_state_dict(pruned.model().state_dict())
    assert_pruned_exact_zero(model, masks)
    train(pruned, model, OPTIMIZERS["adam-wd"](model.parameters()), masks)
    assert all(v.dtype == torch.float64 for v in model.state_dict().values() if v.is_floating_point())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_follow_the_model_to_cuda(pruned: Pruned) -> None:
    model = attach_masks(pruned.model(), pruned.out).to("cuda")
    masks = load_masks(pruned.out)
    assert all(m.device.type == "cuda" for m in attached_masks(model).values())
    model.load_state_dict(pruned.model().state_dict())
    assert_pruned_exact_zero(model, masks)
    for name in ("sgd-momentum-wd", "adamw-wd"):
        train(pruned, model, OPTIMIZERS[name](model.parameters()), masks)
    fused = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.5, fused=True)
    train(pruned, model, fused, masks)
    assert_pruned_exact_zero(model.cpu(), masks)


def test_attaching_twice_replaces_the_masks(pruned: Pruned) -> None:
    model = attach_masks(pruned.model(), pruned.out)
    first = load_masks(pruned.out)
    keep_all = {n: torch.ones_like(m) for n, m in first.items()}
    attach_masks(model, keep_all)
    assert {n: m.all().item() for n, m in attached_masks(model).items()} == dict.fromkeys(first, True)
    for name in first:
        owner = model.get_submodule(name.rpartition(".")[0])
        assert len(owner._forward_pre_hooks) == 1 and len(owner._load_state_dict_post_hooks) == 1
    assert_pruned_exact_zero(model, first)  # zeroed by the first masks; no one revives them yet
    opt = OPTIMIZERS["sgd-momentum-wd"](model.parameters())
    train(pruned, model, opt, keep_all, steps=3)
    revived = pruned_entries(model, first)
    assert all(bool((v != 0).any()) for v in revived.values())  # the old hooks are gone


def test_detach_removes_masks_and_keeps_values(pruned: Pruned) -> None:
    model = attach_masks(pruned.model(), pruned.out)
    masks = load_masks(pruned.out)
    keys = list(model.state_dict())
    assert detach_masks(model) is model and not is_masked(model)
    assert attached_masks(model) == {} and list(model.state_dict()) == keys
    assert not any(MASK_PREFIX in name for name, _ in model.named_buffers())
    assert_pruned_exact_zero(model, masks)
    opt = OPTIMIZERS["sgd-momentum-wd"](model.parameters())
    for _ in range(3):
        x, y = pruned.batch()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(bool((v != 0).any()) for v in pruned_entries(model, masks).values())
    assert detach_masks(model) is model  # a second detach is a no-op


def test_stale_optimizer_state_is_cleared_by_forward_or_reapply(pruned: Pruned) -> None:
    model = pruned.model()
    opt = OPTIMIZERS["sgd-momentum-wd"](model.parameters())
    x, y = pruned.batch()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # momentum now holds dense values
    attach_masks(model, pruned.out)
    masks = load_masks(pruned.out)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # documented: old momentum moves pruned weights ...
    assert any(bool((v != 0).any()) for v in pruned_entries(model, masks).values())
    model(x)  # ... until the next forward re-zeroes them
    assert_pruned_exact_zero(model, masks)
    opt.register_step_post_hook(lambda *_: reapply_masks(model))
    train(pruned, model, opt, masks)


def test_frozen_parameter_unfrozen_later(pruned: Pruned) -> None:
    model = pruned.model()
    for p in model.parameters():
        p.requires_grad_(False)
    attach_masks(model, pruned.out)
    for p in model.parameters():
        p.requires_grad_(True)
    train(pruned, model, OPTIMIZERS["adamw-wd"](model.parameters()), load_masks(pruned.out))


def test_unknown_name_and_shape_mismatch_change_nothing(pruned: Pruned) -> None:
    model = attach_masks(pruned.model(), pruned.out)
    masks = load_masks(pruned.out)
    name, mask = next(iter(masks.items()))
    with pytest.raises(InputError, match=r"mask 'nope\.weight' matches no parameter") as exc:
        attach_masks(model, {name: mask, "nope.weight": mask, "also.missing": mask})
    assert "parameter names" in exc.value.hint and name.split(".")[0] in exc.value.hint
    with pytest.raises(InputError, match=r"'module\.") as exc:
        attach_masks(model, {"module." + name: mask})
    assert "prefix" in exc.value.hint
    with pytest.raises(InputError, match=f"mask '{name}' has shape .* but the parameter has shape") as exc:
        attach_masks(model, {name: mask.reshape(-1)})
    assert exc.value.hint
    assert {n: torch.equal(m, masks[n]) for n, m in attached_masks(model).items()} == dict.fromkeys(
        masks, True
    )
    fresh, dense = pruned.model(), pruned.model().state_dict()
    with pytest.raises(InputError):
        attach_masks(fresh, {name: mask, "x": mask})
    assert not is_masked(fresh)
    assert all(torch.equal(v, dense[k]) for k, v in fresh.state_dict().items())
