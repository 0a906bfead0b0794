"""`prunecli export` of Hugging Face causal language models: token ids in, logits out, sparse weights.

Tiny random Llama and GPT-2 models are saved sharded by transformers, pruned to 50% by magnitude,
exported with `--verify`, and the files are checked against transformers' own forward pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers
from onnx import numpy_helper
from safetensors.numpy import load_file

from prunecli import __version__
from prunecli.pipelines.apply import apply
from prunecli.selection.spec import SelectionSpec

VOCAB = 256
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    ),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64),
}  # fmt: skip
CLASSES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
THRESHOLD = "0.7"  # global magnitude at 50% leaves the pruned layers at densities 0.29 to 0.64
INT64 = onnx.TensorProto.INT64
transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """(original folder, pruned `apply` output) per model kind, built once per module."""
    root = tmp_path_factory.mktemp("hf")
    built: dict[str, tuple[Path, Path]] = {}

    def get(kind: str) -> tuple[Path, Path]:
        if kind not in built:
            torch.manual_seed(0)
            folder, out = root / kind, root / f"{kind}-pruned"
            model = getattr(transformers, CLASSES[kind])(CONFIGS[kind]())
            model.save_pretrained(folder, max_shard_size="50KB")
            assert (folder / "model.safetensors.index.json").is_file()  # sharded
            apply(folder, out, SelectionSpec(density=0.5), method="magnitude")
            built[kind] = folder, out
        return built[kind]

    return get


def transformers_logits(folder: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference: transformers loads the folder itself and runs its own forward pass."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def tokens(seed: int, batch: int, length: int, padded: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ids (batch, length) and a mask whose last row has its last `padded` positions off."""
    ids = np.random.default_rng(seed).integers(0, VOCAB, (batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[-1, length - padded :] = 0
    return ids, mask


def dims(values: object) -> list[tuple[str, int, list[int | str]]]:
    return [
        (
            v.name,
            v.type.tensor_type.elem_type,
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    ]


def dense_from_sparse(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values, indices = numpy_helper.to_array(sparse.values), numpy_helper.to_array(sparse.indices)
    dense = np.zeros(int(np.prod(sparse.dims)), values.dtype)
    dense[indices] = values
    return dense.reshape(tuple(sparse.dims))


def checkpoint(folder: Path) -> dict[str, np.ndarray]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return {
        k: v
        for shard in sorted(set(index["weight_map"].values()))
        for k, v in load_file(folder / shard).items()
    }


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_export_verifies_against_transformers(cli, models, tmp_path: Path, kind: str) -> None:
    _, pruned = models(kind)
    path = tmp_path / "lm.onnx"
    r = cli("export", pruned, "-o", path, "--verify", "--sparse-threshold", THRESHOLD, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    check = report["verification"]
    assert check["passed"] and check["max_abs_error"] <= 1e-5 and check["mismatched"] == 0
    assert check["shapes"] == [[2, 8], [3, 5]] and check["values"] == (2 * 8 + 3 * 5) * VOCAB
    assert report["input_shape"] == ["sequence"] and report["batch"] == "dynamic"
    assert report["arch"] == f"hf:{pruned}" and report["sparse_bytes"] == path.stat().st_size
    assert report["inputs"] == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert report["outputs"] == {"logits": ["batch", "sequence", VOCAB]}

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert dims(model.graph.input) == [
        ("input_ids", INT64, ["batch", "sequence"]),
        ("attention_mask", INT64, ["batch", "sequence"]),
    ]
    assert dims(model.graph.output) == [("logits", onnx.TensorProto.FLOAT, ["batch", "sequence", VOCAB])]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["prunecli_version"] == __version__ and meta["prunecli_arch"] == CLASSES[kind]
    assert meta["prunecli_method"] == "magnitude" and meta["prunecli_input_shape"] == "sequence"

    # the pruned weights are sparse initializers under their checkpoint names, holding exactly its values
    manifest = json.loads((pruned / "manifest.json").read_text())
    pruned_names = {t["name"] for t in manifest["tensors"] if t["pruned"]}
    sparse = {s.values.name: s for s in model.graph.sparse_initializer}
    assert pruned_names and pruned_names <= set(sparse)
    weights = checkpoint(pruned)
    for name in pruned_names:
        np.testing.assert_array_equal(dense_from_sparse(sparse[name]), weights[name])
    dense = {i.name for i in model.graph.initializer}
    assert dense <= set(weights) and not dense & pruned_names  # e.g. the embeddings, under their own names

    # two more shapes, one with padding: onnxruntime agrees with transformers' own forward
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, (batch, length, padded) in enumerate([(1, 11, 0), (4, 3, 1)]):
        ids, mask = tokens(seed, batch, length, padded)
        (got,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        assert got.shape == (batch, length, VOCAB)
        np.testing.assert_allclose(got, transformers_logits(pruned, ids, mask), atol=1e-5, rtol=1e-4)


def test_table_names_the_verification_shapes(cli, models, tmp_path: Path) -> None:
    _, pruned = models("gpt2")
    r = cli("export", pruned, "-o", tmp_path / "g.onnx", "--verify")
    assert r.code == 0 and r.out == ""
    [line] = [line for line in r.err.splitlines() if line.startswith("verify ")]
    assert line.startswith("verify passed: onnxruntime 1.")
    assert " vs torch, input_ids 2×8 and 3×5: max abs error " in line
    assert "transformer.h.0.mlp.c_fc.weight" in r.err and "wrote " in r.err


def test_model_folder_index_file_and_arch_spec(cli, models, tmp_path: Path) -> None:
    """An unpruned model folder (no manifest), and an index file with `--arch hf:DIR` elsewhere."""
    folder, pruned = models("llama")
    r = cli("export", folder, "-o", tmp_path / "a.onnx", "--verify", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["verification"]["passed"] and report["arch"] == f"hf:{folder}"
    assert "prunecli_method" not in report["metadata"]  # no manifest
    assert {t["stored"] for t in report["tensors"]} == {"dense"}  # nothing pruned, nothing sparse

    index = pruned / "model.safetensors.index.json"
    r = cli("export", index, "--arch", f"hf:{folder}", "-o", tmp_path / "b.onnx", "--json", "-q")
    assert r.code == 0, r.err
    assert json.loads(r.out)["arch"] == f"hf:{folder}"


def test_static_batch_and_same_bytes(cli, models, tmp_path: Path) -> None:
    _, pruned = models("gpt2")
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    r = cli("export", pruned, "--static-batch", "1", "-o", a, "--verify", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["verification"]["shapes"] == [[1, 8], [1, 5]]
    model = onnx.load(str(a))
    assert dims(model.graph.input) == [
        ("input_ids", INT64, [1, "sequence"]),
        ("attention_mask", INT64, [1, "sequence"]),
    ]
    assert dims(model.graph.output) == [("logits", onnx.TensorProto.FLOAT, [1, "sequence", VOCAB])]
    assert cli("export", pruned, "--static-batch", "1", "-o", b, "-q").code == 0
    assert a.read_bytes() == b.read_bytes()


def test_verify_mismatch_exits_1(cli, models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = ort.InferenceSession.run
    monkeypatch.setattr(
        ort.InferenceSession, "run", lambda self, *a, **k: [y + 0.01 for y in real_run(self, *a, **k)]
    )
    _, pruned = models("llama")
    r = cli("export", pruned, "-o", tmp_path / "m.onnx", "--verify", "-q")
    assert r.code == 1
    assert r.err.startswith(
        "error: onnxruntime differs from torch: 7,936 of 7,936 output values outside atol"
    )
    assert (tmp_path / "m.onnx").is_file()  # kept for inspection


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--input-shape", "8"],
            "error: --input-shape is for models with a float input; a language model takes token ids "
            "(batch, sequence), both axes dynamic. drop --input-shape.\n",
        ),
        (
            ["--arch-args", '{"width": 2}'],
            "error: --arch-args is for factories; a Hugging Face model is built from its config.json. "
            "drop --arch-args.\n",
        ),
    ],
)
def test_options_for_float_inputs_are_refused(
    cli, models, tmp_path: Path, args: list[str], message: str
) -> None:
    _, pruned = models("gpt2")
    r = cli("export", pruned, "-o", tmp_path / "m.onnx", *args)
    assert (r.code, r.out, r.err) == (2, "", message)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_without_config_needs_arch(cli, tmp_path: Path) -> None:
    assert cli("init", "--arch", "lenet-5", "-o", tmp_path / "i.safetensors", "-q").code == 0
    r = cli("export", tmp_path / "i.safetensors", "-o", tmp_path / "m.onnx")
    assert (r.code, r.out) == (2, "")
    assert r.err == (
        f"error: --arch is needed: {tmp_path / 'i.safetensors'} has no config.json beside it. give --arch "
        "(a zoo name, package.module:factory, file.py:factory, a .pt2 archive or hf:DIR).\n"
    )
