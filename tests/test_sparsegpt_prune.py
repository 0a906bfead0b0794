"""`prune --method sparsegpt` end to end on a tiny Llama: updated weights, exact masks, and
outputs that inspect, compare and export read (issue 12). The solver itself is tested by vector
in test_sparsegpt.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from prunecli.io.manifest import read_manifest
from prunecli.pipelines.prune import prune
from prunecli.selection.spec import SelectionSpec
from tests.hf_folders import llama, token_ids


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sgpt")
    source = llama(root / "llama")
    data = str(token_ids(root / "ids.npz", rows=16, length=32))
    out = {"source": source, "data": Path(data)}
    for method, spec in (("sparsegpt", SelectionSpec(density=0.5, scope="layer")),
                         ("wanda", SelectionSpec(density=0.5, scope="layer"))):  # fmt: skip
        out[method] = root / method
        prune(source, out[method], spec, method, data=data, sequential=False)
    out["nm"] = root / "nm"
    prune(source, out["nm"], SelectionSpec(density=0.5, pattern=(2, 4)), "sparsegpt", data=data)
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    return {n: p.detach() for n, p in model.named_parameters()}


def test_kept_weights_are_updated_and_masks_are_exact(folders: dict[str, Path]) -> None:
    manifest = read_manifest(folders["sparsegpt"] / "manifest.json")
    assert manifest["weights_updated"] is True and manifest["schema_version"] == 2
    assert manifest["method"]["params"] == {
        "block_size": 128, "damp": 0.01, "device": "cpu", "dtype": "float32", "sequential": False,
    }  # fmt: skip
    pruned, source = weights(folders["sparsegpt"]), weights(folders["source"])
    from safetensors.numpy import load_file

    masks = load_file(folders["sparsegpt"] / "masks.safetensors")
    changed = 0
    for record in (t for t in manifest["tensors"] if t["pruned"]):
        name, numel = record["name"], record["numel"]
        mask = np.unpackbits(masks[name], count=numel).astype(bool).reshape(record["shape"])
        assert record["kept"] == mask.sum() == numel // 2  # exactly half of each layer
        assert torch.all(pruned[name][torch.from_numpy(~mask)] == 0)
        changed += int((pruned[name][torch.from_numpy(mask)] != source[name][torch.from_numpy(mask)]).sum())
    assert changed > 0  # the OBS update moved kept weights
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(pruned[name], source[name])


def test_two_four_holds_on_every_layer(folders: dict[str, Path]) -> None:
    manifest = read_manifest(folders["nm"] / "manifest.json")
    assert manifest["method"]["params"]["sequential"] is True
    pruned = weights(folders["nm"])
    for record in (t for t in manifest["tensors"] if t["pruned"]):
        kept = (pruned[record["name"]] != 0).reshape(record["shape"][0], -1, 4).sum(dim=-1)
        assert set(kept.flatten().tolist()) <= {2}  # exactly 2 of every 4 (a kept weight is never 0 here)


def test_reconstruction_error_is_below_wandas_on_every_layer(folders: dict[str, Path]) -> None:
    """‖WX − ŴX‖ on each layer's dense inputs: SparseGPT reconstructs, Wanda only masks."""
    dense = transformers.AutoModelForCausalLM.from_pretrained(folders["source"]).eval()
    inputs: dict[str, list[torch.Tensor]] = {}
    linears = {f"{n}.weight": m for n, m in dense.named_modules() if isinstance(m, torch.nn.Linear)}

    def keep(name: str):
        return lambda _, args: inputs.setdefault(name, []).append(args[0].reshape(-1, args[0].shape[-1]))

    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in linears.items()]
    with torch.no_grad():
        dense(torch.from_numpy(np.load(folders["data"])["input_ids"]))
    for hook in hooks:
        hook.remove()
    sparse, wanda = weights(folders["sparsegpt"]), weights(folders["wanda"])
    manifest = read_manifest(folders["sparsegpt"] / "manifest.json")
    for name in (t["name"] for t in manifest["tensors"] if t["pruned"]):
        x, w = torch.cat(inputs[name]), linears[name].weight.detach()
        ours = torch.linalg.norm(x @ (w - sparse[name]).T)
        theirs = torch.linalg.norm(x @ (w - wanda[name]).T)
        assert ours < theirs, name


def test_inspect_compare_and_export_read_it(cli, folders: dict[str, Path], tmp_path: Path) -> None:
    out = folders["sparsegpt"]
    assert cli("inspect", out, "--expect-sparsity", "0.5", "--tolerance", "0.0001", "-q").code == 0
    compared = cli("compare", out, folders["wanda"], "--json")
    assert compared.code == 0 and 0 < json.loads(compared.out)["totals"]["iou"] < 1
    exported = cli("export", out, "-o", tmp_path / "m.onnx", "--verify", "-q")
    assert exported.code == 0, exported.err


def test_score_refuses_it_in_one_line(cli, folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "s.safetensors"
    result = cli("score", folders["source"], "-m", "sparsegpt", "--data", folders["data"], "-o", out)
    assert result.code == 2 and "prunecli prune -m sparsegpt" in result.err
    assert len(result.err.strip().splitlines()) == 1 and not out.exists()


def test_no_temporary_file_is_left_beside_the_output(folders: dict[str, Path]) -> None:
    leftovers = [p.name for p in folders["sparsegpt"].parent.iterdir() if "prunecli-tmp" in p.name]
    assert leftovers == []
