"""`prunecli eval`: accuracy per class against numpy, baseline drops, gates, perplexity against
transformers' own loss, exit codes, and the JSON report's keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from prunecli.cli.app import run
from tests.conftest import save_f32
from tests.test_imports import heavy_modules

CPU = ["--device", "cpu"]
ARCH = ["--arch", "lenet-300-100", *CPU]  # the exact comparisons run on the CPU
CLASSIFIER_KEYS = {
    "task", "checkpoint", "arch", "data", "data_fingerprint", "device", "dtype", "examples", "correct",
    "accuracy", "classes", "baseline", "drop", "worst_class", "checks",
}  # fmt: skip
LM_KEYS = {
    "task", "checkpoint", "arch", "data", "data_fingerprint", "device", "dtype", "windows", "seq_len",
    "tokens", "nll", "perplexity", "baseline", "perplexity_ratio", "perplexity_increase", "checks",
}  # fmt: skip


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict[str, Path]:
    """LeNet-300-100 trained briefly on the shipped digits (dense.safetensors), pruned to 97% by
    magnitude (an apply output folder), and the 1,000 shipped test digits."""
    from prunecli.models import build_model

    folder = tmp_path_factory.mktemp("eval")
    with np.load(mnist_dir / "train.npz") as data:
        x = torch.from_numpy(data["images"].astype(np.float32) / 255)
        y = torch.from_numpy(data["labels"].astype(np.int64))
    torch.manual_seed(0)
    model = build_model("lenet-300-100")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(40):
        batch = slice((step * 100) % 2000, (step * 100) % 2000 + 100)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    dense = save_f32(
        folder / "dense.safetensors", {k: v.detach().numpy() for k, v in model.state_dict().items()}
    )
    pruned = folder / "pruned"
    assert run(["prune", str(dense), "-m", "magnitude", "-s", "0.97", "-o", str(pruned), "-q"]) == 0
    return {"dense": dense, "pruned": pruned, "test": mnist_dir / "test.npz"}


def numpy_predictions(weights: Path, images: np.ndarray, margin: float = 1e-4) -> np.ndarray:
    """LeNet-300-100's argmax in float64 numpy, with no prediction within `margin` of a tie."""
    w = {k: v.astype(np.float64) for k, v in load_file(weights).items()}
    h = images.reshape(len(images), -1).astype(np.float64) / 255
    h = np.maximum(h @ w["fc1.weight"].T + w["fc1.bias"], 0)
    h = np.maximum(h @ w["fc2.weight"].T + w["fc2.bias"], 0)
    logits = h @ w["fc3.weight"].T + w["fc3.bias"]
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > margin  # the model's rounding picks the same class
    return logits.argmax(axis=1)


def per_class(predictions: np.ndarray, labels: np.ndarray) -> list[float]:
    return [float(np.mean(predictions[labels == c] == c)) for c in range(10)]


def test_accuracy_per_class_equals_numpy(cli, digits: dict[str, Path]) -> None:
    with np.load(digits["test"]) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    expected = numpy_predictions(digits["dense"], images)
    r = cli("eval", digits["dense"], *ARCH, "--data", digits["test"], "--batch-size", "64", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["examples"] == 1000 and report["correct"] == int((expected == labels).sum())
    assert report["accuracy"] == pytest.approx(np.mean(expected == labels), abs=1e-12)
    assert [c["class"] for c in report["classes"]] == list(range(10))
    assert [c["examples"] for c in report["classes"]] == np.bincount(labels).tolist()
    assert [c["accuracy"] for c in report["classes"]] == pytest.approx(per_class(expected, labels), abs=1e-12)
    assert 0.5 < report["accuracy"] < 1.0  # trained, and not every class is perfect
    # the batch size changes nothing
    r = cli("eval", digits["dense"], *ARCH, "--data", digits["test"], "--batch-size", "1000", "--json")
    assert json.loads(r.out)["classes"] == report["classes"]


def test_baseline_gives_drops_and_the_worst_class(cli, digits: dict[str, Path]) -> None:
    with np.load(digits["test"]) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    # float64 passes: the pruned network has a near tie (3e-6) that float32 could round either way
    dense = per_class(numpy_predictions(digits["dense"], images, 1e-9), labels)
    pruned = per_class(numpy_predictions(digits["pruned"] / "model.safetensors", images, 1e-9), labels)
    drops = np.array(dense) - np.array(pruned)
    base = ["eval", digits["pruned"], *ARCH, "--data", digits["test"], "--baseline", digits["dense"]]
    r = cli(*base, "--dtype", "float64", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["dtype"] == "float64"
    assert report["checkpoint"] == str(digits["pruned"])
    assert report["baseline"]["checkpoint"] == str(digits["dense"])
    assert report["drop"] == pytest.approx(report["baseline"]["accuracy"] - report["accuracy"], abs=1e-12)
    assert report["drop"] > 0.01  # 97% sparsity costs accuracy
    assert [c["baseline_accuracy"] for c in report["classes"]] == pytest.approx(dense, abs=1e-12)
    assert [c["drop"] for c in report["classes"]] == pytest.approx(drops.tolist(), abs=1e-12)
    assert report["worst_class"] == {"class": int(np.argmax(drops)), "drop": pytest.approx(drops.max())}
    # the table names the worst class
    r = cli(*base, "--dtype", "float64")
    assert r.code == 0 and r.out == ""
    assert f"worst class {int(np.argmax(drops))} (drop {drops.max():.4f})" in r.err
    assert f"drop {report['drop']:.4f}" in r.err


def test_gates_exit_1_when_exceeded_and_0_at_the_limit(cli, digits: dict[str, Path]) -> None:
    base = ["eval", digits["pruned"], *ARCH, "--data", digits["test"], "--baseline", digits["dense"]]
    report = json.loads(cli(*base, "--json").out)
    drop, worst = report["drop"], report["worst_class"]["drop"]
    r = cli(*base, "--max-drop", f"{drop - 0.002}", "--json", "-q")
    assert r.code == 1
    assert json.loads(r.out)["checks"]["passed"] is False  # the report is still printed
    assert r.err.startswith(f"error: accuracy dropped by {drop:.4f} (")
    assert r.err.rstrip().endswith("the check asked for with eval did not hold.")
    assert len(r.err.splitlines()) == 1
    assert cli(*base, "--max-drop", f"{drop:.17g}", "-q").code == 0  # equal to the limit passes
    r = cli(*base, "--max-class-drop", f"{worst - 0.002}", "-q")
    assert r.code == 1 and f"class {report['worst_class']['class']} by {worst:.4f}" in r.err
    r = cli(*base, "--max-drop", "1", "--max-class-drop", f"{worst:.17g}", "--json")
    assert r.code == 0
    assert json.loads(r.out)["checks"] == {"passed": True, "failures": [], "max_drop": 1.0,
                                           "max_class_drop": pytest.approx(worst)}  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-drop", "0.02"], "error: --max-drop limits the loss against a baseline, and none was given"),
        (["--max-class-drop", "0.1"], "error: --max-class-drop limits the loss against a baseline"),
        (["--max-drop", "nan"], "error: --max-drop nan is not a finite number ≥ 0"),
    ],
)
def test_gates_need_a_baseline_and_a_fraction(
    cli, digits: dict[str, Path], args: list[str], message: str
) -> None:
    r = cli("eval", digits["pruned"], *ARCH, "--data", digits["test"], *args)
    assert (r.code, r.out) == (2, "")
    assert r.err.startswith(message) and len(r.err.splitlines()) == 1


def test_labels_outside_the_models_classes_exit_2(cli, digits: dict[str, Path], tmp_path: Path) -> None:
    with np.load(digits["test"]) as data:
        labels = data["labels"].astype(np.int64)
        labels[7] = 10
        np.savez(tmp_path / "bad.npz", images=data["images"], labels=labels)
        np.savez(tmp_path / "unlabelled.npz", images=data["images"])
    r = cli("eval", digits["dense"], *ARCH, "--data", tmp_path / "bad.npz")
    assert (r.code, r.out) == (2, "")
    assert r.err == (f"error: labels in {tmp_path / 'bad.npz'} go up to 10, but the model has 10 classes. "
                     "use data labelled 0..9, or the model those labels belong to.\n")  # fmt: skip
    for data in (tmp_path / "unlabelled.npz", "random:784"):
        r = cli("eval", digits["dense"], *ARCH, "--data", data)
        assert (r.code, r.out) == (2, "")
        assert "has no labels" in r.err and len(r.err.splitlines()) == 1


def test_a_checkpoint_without_config_needs_arch(cli, digits: dict[str, Path]) -> None:
    r = cli("eval", digits["pruned"], "--data", digits["test"])
    assert (r.code, r.out) == (2, "")
    assert "no config.json says which model they fit. add --arch" in r.err


def test_classifier_json_has_the_same_keys_with_and_without_baseline(cli, digits: dict[str, Path]) -> None:
    alone = json.loads(cli("eval", digits["pruned"], *ARCH, "--data", digits["test"], "--json").out)
    both = json.loads(
        cli(
            "eval", digits["pruned"], *ARCH, "--data", digits["test"], "--baseline", digits["dense"], "--json"
        ).out
    )
    for report in (alone, both):
        assert set(report) == CLASSIFIER_KEYS
        assert (report["task"], report["arch"], report["device"], report["dtype"]) == (
            "classification", "lenet-300-100", "cpu", "float32",
        )  # fmt: skip
        assert len(report["data_fingerprint"]) == 64
        for record in report["classes"]:
            assert set(record) == {"class", "examples", "correct", "accuracy", "baseline_accuracy", "drop"}
        assert set(report["checks"]) == {"passed", "failures", "max_drop", "max_class_drop"}
    assert alone["baseline"] is alone["drop"] is alone["worst_class"] is None
    assert all(c["baseline_accuracy"] is None and c["drop"] is None for c in alone["classes"])
    assert set(both["baseline"]) == {"checkpoint", "arch", "examples", "correct", "accuracy"}
    assert set(both["worst_class"]) == {"class", "drop"}


# Causal language models ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("transformers")
    from tests.hf_folders import corpus, llama

    folder = tmp_path_factory.mktemp("lm")
    text = folder / "corpus.txt"
    text.write_text(corpus()[:3000])
    return {"a": llama(folder / "a", seed=0), "b": llama(folder / "b", seed=1), "text": text}


def reference_perplexity(folder: Path, windows: list[torch.Tensor]) -> tuple[float, int]:
    """exp(mean NLL) over the windows, from transformers' own `labels=` loss, and the tokens predicted."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            n = ids.numel() - 1  # the first token of a window has no prediction
            total += float(model(input_ids=ids[None], labels=ids[None]).loss) * n
            count += n
    return math.exp(total / count), count


def text_windows(folder: Path, text: Path, length: int) -> list[torch.Tensor]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder)(text.read_text(), add_special_tokens=False)["input_ids"]
    stream = torch.tensor(ids)
    return [w for w in stream.split(length) if w.numel() > 1]


def test_perplexity_on_text_equals_transformers_loss(cli, lms: dict[str, Path]) -> None:
    windows = text_windows(lms["a"], lms["text"], 24)
    assert windows[-1].numel() < 24  # the last window is shorter: padded in its batch
    expected, count = reference_perplexity(lms["a"], windows)
    r = cli("eval", lms["a"], *CPU, "--data", lms["text"], "--seq-len", "24", "--batch-size", "3", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert set(report) == LM_KEYS
    assert (report["task"], report["arch"], report["seq_len"]) == ("language-modeling", f"hf:{lms['a']}", 24)
    assert (report["windows"], report["tokens"]) == (len(windows), count)
    assert report["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert report["nll"] == pytest.approx(math.log(expected), rel=1e-5)
    assert report["baseline"] is report["perplexity_ratio"] is report["perplexity_increase"] is None


def test_perplexity_on_token_ids_equals_transformers_loss(cli, lms: dict[str, Path], tmp_path: Path) -> None:
    from tests.hf_folders import token_ids

    ids = token_ids(tmp_path / "ids.npz", rows=5, length=12)
    with np.load(ids) as data:
        rows = [torch.from_numpy(row) for row in data["input_ids"]]
    expected, count = reference_perplexity(lms["a"], rows)
    report = json.loads(cli("eval", lms["a"], *CPU, "--data", ids, "--batch-size", "2", "--json").out)
    assert (report["windows"], report["tokens"], report["seq_len"]) == (5, count, 12)
    assert report["perplexity"] == pytest.approx(expected, rel=1e-5)


def test_perplexity_against_a_baseline_and_its_gate(cli, lms: dict[str, Path]) -> None:
    windows = text_windows(lms["a"], lms["text"], 32)
    ppl = {name: reference_perplexity(lms[name], windows)[0] for name in ("a", "b")}
    worse, better = sorted(ppl, key=ppl.__getitem__, reverse=True)
    increase = ppl[worse] / ppl[better] - 1
    assert increase > 1e-3
    base = ["eval", lms[worse], *CPU, "--data", lms["text"], "--seq-len", "32", "--baseline", lms[better]]
    r = cli(*base, "--max-drop", f"{increase * 0.9}", "--json")
    assert r.code == 1
    report = json.loads(r.out)
    assert set(report) == LM_KEYS
    assert report["perplexity"] == pytest.approx(ppl[worse], rel=1e-5)
    assert report["baseline"]["perplexity"] == pytest.approx(ppl[better], rel=1e-5)
    assert report["perplexity_ratio"] == pytest.approx(ppl[worse] / ppl[better], rel=1e-5)
    assert report["perplexity_increase"] == pytest.approx(increase, rel=1e-3)
    assert report["checks"]["passed"] is False
    assert r.err.startswith(f"error: perplexity rose by {report['perplexity_increase']:.2%} (")
    r = cli(*base, "--max-drop", f"{increase * 1.1}")
    assert (r.code, r.out) == (0, "")
    assert f"ratio {report['perplexity_ratio']:.4f} ({report['perplexity_increase']:+.2%})" in r.err
    r = cli(*base, "--max-class-drop", "0.1")
    assert r.code == 2 and r.err.startswith("error: --max-class-drop is for classifiers")


def test_perplexity_through_python_with_a_gate(lms: dict[str, Path]) -> None:
    from prunecli.pipelines.eval import evaluate

    windows = text_windows(lms["a"], lms["text"], 32)
    expected, _ = reference_perplexity(lms["a"], windows)
    # the weights file with `arch` hf:FOLDER (its config and tokenizer), the folder as the baseline
    weights, arch = lms["a"] / "model.safetensors.index.json", f"hf:{lms['a']}"
    report = evaluate(
        weights, str(lms["text"]), arch=arch, seq_len=32, baseline=lms["a"], max_drop=0.0, device="cpu"
    )
    assert report["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert report["perplexity_ratio"] == pytest.approx(1.0, abs=1e-12)  # the same model: no increase
    assert report["checks"]["passed"] is True


def test_eval_help_imports_no_torch() -> None:
    assert heavy_modules("eval", "--help") == (0, "")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_eval_on_cuda_matches_the_cpu(cli, digits: dict[str, Path], lms: dict[str, Path]) -> None:
    base = [
        "eval",
        digits["pruned"],
        "--arch",
        "lenet-300-100",
        "--data",
        digits["test"],
        "--dtype",
        "float64",
    ]
    base += ["--baseline", digits["dense"], "--json"]
    cpu, gpu = (json.loads(cli(*base, "--device", device).out) for device in ("cpu", "cuda"))
    assert gpu["device"] == "cuda" and gpu["classes"] == cpu["classes"] and gpu["drop"] == cpu["drop"]
    base = ["eval", lms["a"], "--data", lms["text"], "--seq-len", "24", "--batch-size", "3", "--json"]
    cpu, gpu = (json.loads(cli(*base, "--device", device).out) for device in ("cpu", "cuda"))
    assert gpu["tokens"] == cpu["tokens"] and gpu["perplexity"] == pytest.approx(cpu["perplexity"], rel=1e-4)
