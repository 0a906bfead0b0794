"""Block-by-block (sequential) pruning of language models, and masks decided while calibrating
(issue 12): each block is calibrated on the outputs of the pruned blocks before it."""

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
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama(tmp_path_factory.mktemp("llama") / "llama")


def masks_of(folder: Path) -> dict[str, np.ndarray]:
    """Each pruned tensor's keep mask, from the output's weights (pruned entries are zero)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)
    manifest = read_manifest(folder / "manifest.json")
    weights = dict(model.named_parameters())
    return {t["name"]: (weights[t["name"]] != 0).numpy() for t in manifest["tensors"] if t["pruned"]}


def reference_sequential_wanda(folder: Path, ids: torch.Tensor, density: float) -> dict[str, np.ndarray]:
    """Sequential Wanda written differently: for block i, the whole float64 model runs with
    blocks < i already pruned, hooks collect ‖X_j‖ at block i's Linear inputs, then each output
    row keeps its top `density` of |W|·‖X_j‖ (ties: the lower index is pruned first)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64).eval()
    masks: dict[str, np.ndarray] = {}
    for index, block in enumerate(model.model.layers):
        linears = {n: m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
        norms = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}

        def hook(total: torch.Tensor):
            def collect(_: object, args: tuple[torch.Tensor, ...]) -> None:
                total.add_(args[0].reshape(-1, args[0].shape[-1]).pow(2).sum(0))

            return collect

        handles = [m.register_forward_pre_hook(hook(norms[n])) for n, m in linears.items()]
        with torch.no_grad():
            model(ids)
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, module in linears.items():
                scores = (module.weight.abs() * norms[name].sqrt()).numpy()
                keep = round(density * scores.shape[1])
                order = np.argsort(-scores, axis=1, kind="stable")  # equal scores: lower index first
                mask = np.zeros_like(scores, dtype=bool)
                np.put_along_axis(mask, order[:, :keep], True, axis=1)
                module.weight.mul_(torch.from_numpy(mask))
                masks[f"model.layers.{index}.{name}.weight"] = mask
    return masks


def test_sequential_wanda_equals_an_independent_float64_version(llama_dir: Path, tmp_path: Path) -> None:
    path = token_ids(tmp_path / "ids.npz", rows=4, length=16)
    prune(llama_dir, tmp_path / "out", SelectionSpec(density=0.5, scope="row"), "wanda", data=str(path),
          dtype="float64")  # fmt: skip
    ours = masks_of(tmp_path / "out")
    reference = reference_sequential_wanda(llama_dir, torch.from_numpy(np.load(path)["input_ids"]), 0.5)
    assert ours.keys() == reference.keys()
    for name in ours:
        assert np.array_equal(ours[name], reference[name]), name


def test_sequential_differs_from_one_shot_after_the_first_block(llama_dir: Path, tmp_path: Path) -> None:
    data = str(token_ids(tmp_path / "ids.npz"))
    spec = SelectionSpec(density=0.5, scope="row")
    sequential = prune(llama_dir, tmp_path / "seq", spec, "wanda", data=data)
    one_shot = prune(llama_dir, tmp_path / "one", spec, "wanda", data=data, sequential=False)
    assert sequential.manifest["method"]["params"]["sequential"] is True
    assert "sequential" not in one_shot.manifest["method"]["params"]  # scored on the dense model
    a, b = masks_of(tmp_path / "seq"), masks_of(tmp_path / "one")
    first = [n for n in a if n.startswith("model.layers.0.")]
    later = [n for n in a if n.startswith("model.layers.1.")]
    assert all(np.array_equal(a[n], b[n]) for n in first)  # the same dense inputs
    assert not all(np.array_equal(a[n], b[n]) for n in later)  # pruned vs dense inputs


def test_one_block_model_gives_the_same_masks_either_way(tmp_path: Path) -> None:
    folder = tmp_path / "one-block"
    llama(folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)  # drops block 1's tensors
    one = tmp_path / "one-block-saved"
    model.save_pretrained(one, max_shard_size="20KB")
    assert len(index["weight_map"]) > len(
        json.loads((one / "model.safetensors.index.json").read_text())["weight_map"]
    )
    data = str(token_ids(tmp_path / "ids.npz"))
    spec = SelectionSpec(density=0.5, scope="row")
    prune(one, tmp_path / "seq", spec, "wanda", data=data)
    prune(one, tmp_path / "shot", spec, "wanda", data=data, sequential=False)
    a, b = masks_of(tmp_path / "seq"), masks_of(tmp_path / "shot")
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)


def test_offloaded_activations_give_the_same_output(llama_dir: Path, tmp_path: Path) -> None:
    data = str(token_ids(tmp_path / "ids.npz"))
    spec = SelectionSpec(density=0.5, pattern=(2, 4))
    offload = tmp_path / "offload"
    offload.mkdir()
    prune(llama_dir, tmp_path / "memory", spec, "wanda", data=data)
    prune(llama_dir, tmp_path / "disk", spec, "wanda", data=data, offload_dir=offload)
    assert list(offload.iterdir()) == []  # every activation file was removed
    files = sorted(p.name for p in (tmp_path / "memory").glob("*.safetensors"))
    assert "masks.safetensors" in files and len(files) > 2
    for name in files:
        assert (tmp_path / "memory" / name).read_bytes() == (tmp_path / "disk" / name).read_bytes()


def test_global_scope_becomes_the_methods_own_with_a_note(llama_dir: Path, tmp_path: Path) -> None:
    applied = prune(llama_dir, tmp_path / "out", SelectionSpec(density=0.5), "wanda",
                    data=str(token_ids(tmp_path / "ids.npz")))  # fmt: skip
    assert applied.manifest["selection"]["scope"] == "row"
    assert any("global scope cannot apply" in note for note in applied.notes)


def test_rules_that_need_every_layer_are_refused(cli, llama_dir: Path, tmp_path: Path) -> None:
    ids = token_ids(tmp_path / "ids.npz")
    result = cli("prune", llama_dir, "-m", "wanda", "--data", ids, "-s", "0.5", "--allocation", "erk",
                 "--scope", "layer", "-o", tmp_path / "out")  # fmt: skip
    assert result.code == 2 and "--allocation" in result.err and not (tmp_path / "out").exists()


def test_a_version_1_manifest_is_read_and_a_newer_one_refused(llama_dir: Path, tmp_path: Path) -> None:
    from prunecli.errors import ManifestError
    from prunecli.pipelines.apply import apply

    apply(llama_dir, tmp_path / "out", SelectionSpec(density=0.5), method="magnitude")
    path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["schema_version"] == 2 and manifest["weights_updated"] is False
    del manifest["weights_updated"]
    path.write_text(json.dumps({**manifest, "schema_version": 1}))
    assert read_manifest(path)["weights_updated"] is False
    path.write_text(json.dumps({**manifest, "schema_version": 3}))
    with pytest.raises(ManifestError, match="newer than this prunecli reads"):
        read_manifest(path)
