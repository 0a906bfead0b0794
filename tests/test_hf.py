"""Hugging Face model folders end to end: in as checkpoints and architectures, out as folders
that transformers loads as they are (issue 11). Models are tiny and built from configs here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from prunecli.calibration.forward import forward
from prunecli.calibration.losses import IGNORE, compute_loss
from prunecli.calibration.tokens import load_tokens
from prunecli.io.checkpoints import open_checkpoint
from prunecli.io.manifest import read_manifest
from prunecli.io.safetensors_header import read_header
from prunecli.pipelines.apply import apply
from prunecli.pipelines.prune import prune
from prunecli.pipelines.score import score
from prunecli.selection.spec import SelectionSpec
from tests.hf_folders import MAX_POSITIONS, VOCAB, corpus, gpt2, llama, token_ids

LLAMA_LINEAR = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)}  # fmt: skip
GPT2_CONV1D = {f"transformer.h.{i}.{m}.weight" for i in range(2) for m in (
    "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj",
)}  # fmt: skip


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama(tmp_path_factory.mktemp("llama") / "llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpt2(tmp_path_factory.mktemp("gpt2") / "gpt2")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calibration.txt"
    path.write_text(corpus(), encoding="utf-8")
    return path


def load_pruned(folder: Path) -> transformers.PreTrainedModel:
    """The output folder through transformers, refusing any missing or unexpected key."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


# --- a folder is a checkpoint -------------------------------------------------------------------


def test_inspect_a_model_folder_and_its_index(cli, llama_dir: Path) -> None:
    by_folder = cli("inspect", llama_dir, "--json")
    by_index = cli("inspect", llama_dir / "model.safetensors.index.json", "--json")
    assert by_folder.code == by_index.code == 0, by_folder.err + by_index.err
    folder, index = json.loads(by_folder.out), json.loads(by_index.out)
    assert folder["tensors"] == index["tensors"] and folder["kind"] == "checkpoint"
    pruned = {t["name"] for t in folder["tensors"] if t["pruned"]}
    assert pruned == LLAMA_LINEAR  # the default set: Linear weights inside the blocks
    assert folder["totals"]["sparsity"] == 0.0 and all(t["density"] == 1.0 for t in folder["tensors"])
    assert cli("inspect", llama_dir, "--expect-sparsity", "0.5", "--tolerance", "0.01").code == 1


def test_default_set_leaves_embeddings_head_and_norms(llama_dir: Path, tmp_path: Path) -> None:
    applied = apply(llama_dir, tmp_path / "out", SelectionSpec(density=0.5), method="magnitude")
    pruned = {t["name"] for t in applied.manifest["tensors"] if t["pruned"]}
    assert pruned == LLAMA_LINEAR
    assert applied.manifest["totals"]["sparsity"] == 0.5


def test_an_exclude_that_matches_nothing_names_the_closest(cli, llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = cli("apply", llama_dir, "-m", "magnitude", "-s", "0.5", "--exclude", "lm_head", "-o", out)
    assert result.code == 2 and not (tmp_path / "o").exists()
    assert "lm_head.weight" in result.err and len(result.err.strip().splitlines()) == 1


def test_huggingface_cache_snapshot_links_are_read(llama_dir: Path, tmp_path: Path) -> None:
    """A hub cache snapshot links each file to ../../blobs/: that is not a link out."""
    repo = tmp_path / "models--tiny--llama"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for path in llama_dir.iterdir():
        (blobs / f"blob-{path.name}").write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(Path("../../blobs") / f"blob-{path.name}")
    with open_checkpoint(snapshot) as cached, open_checkpoint(llama_dir) as original:
        assert cached.tensors.keys() == original.tensors.keys() and cached.sha256() == original.sha256()


# --- out: folders transformers loads ----------------------------------------------------------


def test_wanda_on_text_gives_a_folder_transformers_loads(
    llama_dir: Path, text_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pruned"
    applied = prune(llama_dir, out, SelectionSpec(density=0.5, scope="row"), "wanda", data=str(text_file),
                    num_samples=4)  # fmt: skip
    shards = sorted(p.name for p in llama_dir.glob("model-*.safetensors"))
    assert sorted(p.name for p in out.glob("model-*.safetensors")) == shards  # sharded like the input
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (llama_dir / name).read_bytes()
    for shard in shards:
        assert read_header(out / shard)[1]["format"] == "pt"
    manifest = read_manifest(out / "manifest.json")
    assert manifest["files"]["model"] == "model.safetensors.index.json"
    assert manifest["files"]["shards"] == shards
    assert applied.warnings == [] and manifest["method"]["data_fingerprint"]
    assert manifest["source"]["arch"] == f"hf:{llama_dir}"

    model, dense = load_pruned(out), load_pruned(llama_dir)
    weights = model.model.layers[0].mlp.up_proj.weight
    assert set((weights != 0).sum(dim=1).tolist()) == {16}  # each output row keeps half of its 32 inputs
    kept = weights != 0
    assert torch.equal(weights[kept], dense.model.layers[0].mlp.up_proj.weight[kept])
    assert torch.equal(model.lm_head.weight, dense.lm_head.weight)
    generated = model.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)


def test_gpt2_conv1d_is_pruned_along_its_inputs_and_stays_tied(gpt2_dir: Path, tmp_path: Path) -> None:
    ids = token_ids(tmp_path / "ids.npz")
    prune(gpt2_dir, tmp_path / "row", SelectionSpec(density=0.25, scope="row"), "wanda", data=str(ids))
    apply(gpt2_dir, tmp_path / "nm", SelectionSpec(density=0.5, pattern=(2, 4)), method="magnitude")
    row, nm = load_pruned(tmp_path / "row"), load_pruned(tmp_path / "nm")
    assert row.lm_head.weight is row.transformer.wte.weight  # still tied
    for i in range(2):
        weight = row.transformer.h[i].mlp.c_fc.weight  # (in 32, out 128)
        assert set((weight != 0).sum(dim=0).tolist()) == {8}  # each output keeps 1/4 of its 32 inputs
        groups = (nm.transformer.h[i].mlp.c_fc.weight != 0).reshape(8, 4, 128).sum(dim=1)
        assert set(groups.flatten().tolist()) == {2}  # 2 of every 4 consecutive input features
    manifest = read_manifest(tmp_path / "row" / "manifest.json")
    assert {t["name"] for t in manifest["tensors"] if t["pruned"]} == GPT2_CONV1D


def test_max_shard_size_reshards(llama_dir: Path, tmp_path: Path) -> None:
    applied = apply(llama_dir, tmp_path / "out", SelectionSpec(density=0.5), method="magnitude",
                    max_shard_size=60_000)  # fmt: skip
    shards = applied.manifest["files"]["shards"]
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    load_pruned(tmp_path / "out")


def test_force_replaces_a_previous_folder_output(cli, llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("apply", llama_dir, "-m", "magnitude", "-s", "0.5", "-o", out)
    assert cli(*args).code == 0
    assert cli(*args).code == 2  # exists
    assert cli(*args, "--force").code == 0  # its shards and copied config are prunecli's own


# --- model-based methods on language models ---------------------------------------------------


@pytest.mark.parametrize("method,options", [
    ("snip", {}), ("grasp", {}), ("taylor", {}), ("wanda", {}),
    ("obd", {"hessian": "hutchinson", "hutchinson_samples": 1}),
])  # fmt: skip
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_methods_score_language_models(
    method: str, options: dict, family: str, llama_dir: Path, gpt2_dir: Path, tmp_path: Path
) -> None:
    folder = llama_dir if family == "llama" else gpt2_dir
    ids = token_ids(tmp_path / "ids.npz", rows=4, length=8)
    written = score(folder, method, tmp_path / "s.safetensors", data=str(ids), options=options)
    assert set(written.names) == (LLAMA_LINEAR if family == "llama" else GPT2_CONV1D)
    params = json.loads(written.metadata["params"])
    assert params.get("loss", "lm") == "lm"
    with open_checkpoint(tmp_path / "s.safetensors") as scores:
        assert all(np.isfinite(scores.read(n)).all() for n in scores.tensors)


def test_scores_and_apply_share_one_fingerprint(llama_dir: Path, tmp_path: Path) -> None:
    ids = token_ids(tmp_path / "ids.npz")
    written = score(llama_dir, "snip", tmp_path / "s.safetensors", data=str(ids))
    applied = apply(llama_dir, tmp_path / "o", SelectionSpec(density=0.5), scores=tmp_path / "s.safetensors")
    assert applied.warnings == []
    assert written.metadata["source_sha256"] == applied.manifest["source"]["sha256"]


def test_bfloat16_compute_keeps_the_checkpoint_dtype(tmp_path: Path) -> None:
    folder = llama(tmp_path / "bf16", dtype=torch.bfloat16)
    ids = token_ids(tmp_path / "ids.npz")
    applied = prune(folder, tmp_path / "out", SelectionSpec(density=0.5, scope="row"), "wanda", data=str(ids),
                    dtype="bfloat16")  # fmt: skip
    assert applied.manifest["method"]["params"]["dtype"] == "bfloat16"
    assert {t["dtype"] for t in applied.manifest["tensors"]} == {"BF16"}
    assert load_pruned(tmp_path / "out").dtype == torch.bfloat16


# --- token data -------------------------------------------------------------------------------


def test_token_ids_stay_integer_with_next_token_labels(tmp_path: Path) -> None:
    mask = np.ones((3, 6), dtype=np.int64)
    mask[0, 4:] = 0  # the first row is padded after 4 tokens
    path = token_ids(tmp_path / "ids.npz", rows=3, length=6, attention_mask=mask)
    calibration = load_tokens(str(path), tokenizer_folder=None, vocab_size=VOCAB, max_len=None, batch_size=3)
    ((ids, labels),) = calibration.batches
    raw = np.load(path)["input_ids"]
    assert ids.dtype == torch.int64 and labels.dtype == torch.int64
    assert ids[0, 4:].tolist() == [-1, -1] and ids[1].tolist() == raw[1].tolist()
    assert labels[1, :-1].tolist() == raw[1, 1:].tolist() and labels[1, -1] == IGNORE
    assert labels[0, 3:].tolist() == [IGNORE] * 3  # no target where the next token is padding


def test_lm_loss_and_padding_match_transformers(llama_dir: Path, tmp_path: Path) -> None:
    model = load_pruned(llama_dir)
    mask = np.ones((2, 10), dtype=np.int64)
    mask[1, 7:] = 0
    path = token_ids(tmp_path / "ids.npz", rows=2, length=10, attention_mask=mask)
    ((ids, labels),) = load_tokens(str(path), tokenizer_folder=None, vocab_size=VOCAB, max_len=None).batches
    raw, attention = torch.from_numpy(np.load(path)["input_ids"]), torch.from_numpy(mask)
    with torch.no_grad():
        ours = forward(model, ids)
        theirs = model(input_ids=raw, attention_mask=attention).logits
        assert torch.allclose(ours[attention.bool()], theirs[attention.bool()], atol=1e-5)
        reference = model(input_ids=raw[:1], labels=raw[:1]).loss  # transformers' own causal-LM loss
        assert torch.allclose(compute_loss("lm", forward(model, ids[:1]), labels[:1]), reference, atol=1e-5)


def test_text_windows_are_seeded_and_capped_at_the_model_length(llama_dir: Path, text_file: Path) -> None:
    def windows(seed: int) -> torch.Tensor:
        calibration = load_tokens(str(text_file), tokenizer_folder=llama_dir, vocab_size=VOCAB,
                                  max_len=MAX_POSITIONS, num_samples=5, seed=seed)  # fmt: skip
        return torch.cat([x for x, _ in calibration.batches])

    first = windows(0)
    assert first.shape == (5, MAX_POSITIONS) and torch.equal(first, windows(0))
    assert not torch.equal(first, windows(1))


@pytest.mark.parametrize("case,expected", [
    ("float", "not integers"),
    ("outside", "outside the model's 128-token vocabulary"),
    ("mask", "attention_mask"),
    ("empty", "is empty"),
    ("jsonl", "no string 'text' field"),
])  # fmt: skip
def test_bad_token_data_is_one_line_and_exit_2(
    cli, case: str, expected: str, llama_dir: Path, tmp_path: Path
) -> None:
    data = {
        "float": lambda p: np.savez(p, input_ids=np.ones((2, 4), np.float32)),
        "outside": lambda p: np.savez(p, input_ids=np.full((2, 4), VOCAB, np.int64)),
        "mask": lambda p: np.savez(p, input_ids=np.ones((2, 4), np.int64), attention_mask=np.ones((2, 3))),
        "empty": lambda p: p.write_text("  \n"),
        "jsonl": lambda p: p.write_text('{"body": "no text here"}\n'),
    }
    path = tmp_path / {"empty": "d.txt", "jsonl": "d.jsonl"}.get(case, "d.npz")
    data[case](path)
    result = cli("prune", llama_dir, "-m", "wanda", "--data", path, "-s", "0.5", "-o", tmp_path / "out")
    assert result.code == 2 and expected in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


# --- without transformers, and remote code ----------------------------------------------------


def test_without_transformers_the_install_line_is_given(llama_dir: Path, tmp_path: Path) -> None:
    ids = token_ids(tmp_path / "ids.npz")
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "from prunecli.cli.app import run\n"
        f"sys.exit(run(['score', {str(llama_dir)!r}, '-m', 'snip', '--data', {str(ids)!r},"
        f" '-o', {str(tmp_path / 's.safetensors')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "pip install 'prunecli[hf]'" in result.stderr and "Traceback" not in result.stderr


def test_code_shipped_with_a_model_runs_only_when_trusted(cli, tmp_path: Path) -> None:
    folder = tmp_path / "custom"
    folder.mkdir()
    config = {
        "model_type": "custom-lm",
        "architectures": ["CustomLM"],
        "auto_map": {"AutoConfig": "modeling.Cfg"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling.py").write_text("raise SystemExit('remote code ran')\n")
    from prunecli.io.safetensors_file import write_arrays

    write_arrays(folder / "model.safetensors", {"w.0.weight": ("F32", np.ones((4, 4), np.float32))}, {})
    ids = token_ids(tmp_path / "ids.npz")
    result = cli("score", folder, "-m", "snip", "--data", ids, "-o", tmp_path / "s.safetensors")
    assert result.code == 2 and "trust-remote-code" in result.err, result.err
