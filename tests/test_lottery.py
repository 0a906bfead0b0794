"""`prunecli lottery`: rounds of training, cumulative magnitude pruning and rewinding; resuming;
a failing or careless training command."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from prunecli.pipelines.lottery import lottery
from tests.conftest import save_f32

PRUNED = ("fc1.weight", "fc2.weight")
OUT_HINT = "write the trained weights (the whole state dict, as safetensors) to the {out} argument."
RATE_HINT = "give the fraction of survivors each round prunes, e.g. 0.2."
KEPT = {1: 205, 2: 164, 3: 131}  # round(256 · 0.8^k) of the MLP's 256 prunable weights

# The training command: numpy only, fast. It checks that {weights} is masked by {masks}, then
# "trains" by scaling every weight by a factor in [0.5, 2.5] that depends on its index and the
# round (so zeros stay zero and the ranking changes), and writes {out}. MODE makes it misbehave.
TRAIN = """
import sys
from pathlib import Path

import numpy as np

from prunecli.io.checkpoints import open_checkpoint
from prunecli.io.safetensors_file import write_arrays
from prunecli.training.masks import read_masks

weights, masks, out, k, mode, state = sys.argv[1:7]
k, state = int(k), Path(state)
with (state / "calls.txt").open("a") as calls:
    calls.write(f"{k}\\n")
print(f"training round {k} from {weights}")
if mode == f"crash-once:{k}" and not (state / "crashed").exists():
    (state / "crashed").touch()
    print("loss is nan", file=sys.stderr)
    print(f"crash in round {k}")
    sys.exit(7)
if mode == "nothing":
    sys.exit(0)
keep = read_masks(masks)
arrays = {}
with open_checkpoint(Path(weights)) as ckpt:
    for name in ckpt.tensors:
        w = ckpt.read(name).astype(np.float32)
        if name in keep and (w[~keep[name]] != 0).any():
            print(f"{name} is not masked by {masks}")
            sys.exit(4)
        factor = 1.5 + np.sin(np.arange(w.size, dtype=np.float32) * 0.37 + k).reshape(w.shape)
        arrays[name] = ("F32", (w * factor).astype(np.float32))
if mode == "shapes":
    arrays["fc1.weight"] = ("F32", arrays["fc1.weight"][1].T.reshape(12, 16))
write_arrays(Path(out), arrays, {})
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(TRAIN)
    (tmp_path / "state").mkdir()
    return path


def command(script: Path, mode: str = "ok") -> str:
    state = script.parent / "state"
    program = shlex.join([sys.executable, str(script)])
    return f"{program} {{weights}} {{masks}} {{out}} {{round}} {mode} {shlex.quote(str(state))}"


def masks_of(folder: Path) -> dict[str, np.ndarray]:
    model, packed = load_file(folder / "model.safetensors"), load_file(folder / "masks.safetensors")
    return {
        n: np.unpackbits(packed[n], count=model[n].size).reshape(model[n].shape).astype(bool) for n in PRUNED
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calls(script: Path) -> list[int]:
    return [int(line) for line in (script.parent / "state" / "calls.txt").read_text().split()]


def test_three_rounds_prune_by_trained_magnitude_and_rewind(
    cli, mlp_ckpt: Path, script: Path, tmp_path: Path
) -> None:
    out = tmp_path / "imp"
    r = cli(
        "lottery", mlp_ckpt, "--train", command(script), "--rounds", "3", "--rate", "0.2", "-o", out, "--json"
    )
    assert r.code == 0, r.err
    run = json.loads(r.out)
    assert [(x["round"], x["kept"], x["prunable"], x["resumed"]) for x in run["rounds"]] == [
        (0, 256, 256, False),
        (1, 205, 256, False),
        (2, 164, 256, False),
        (3, 131, 256, False),
    ]
    assert run["rounds"][3]["sparsity"] == 1 - 131 / 256
    assert "training round 2 from" in r.err  # the command's output, echoed on stderr
    init = load_file(mlp_ckpt)
    previous = masks_of(out / "round-0")
    assert all(m.all() for m in previous.values())
    for k in (1, 2, 3):
        folder, trained_path = out / f"round-{k}", out / f"round-{k}-trained.safetensors"
        masks, model, trained = (
            masks_of(folder),
            load_file(folder / "model.safetensors"),
            load_file(trained_path),
        )
        # the KEPT[k] largest trained magnitudes among the survivors of round k-1
        survivors = np.concatenate([np.abs(trained[n][previous[n]]) for n in PRUNED])
        cut = np.sort(survivors)[-KEPT[k]]
        for name in PRUNED:
            np.testing.assert_array_equal(masks[name], previous[name] & (np.abs(trained[name]) >= cut))
        for name, tensor in init.items():  # rewound: the survivors hold INIT's values again
            expected = np.where(masks[name], tensor, 0) if name in PRUNED else tensor
            assert model[name].tobytes() == expected.tobytes(), (k, name)
        manifest = json.loads((folder / "manifest.json").read_text())
        parent = out / f"round-{k - 1}"
        filled = {
            "weights": parent / "model.safetensors",
            "masks": parent / "manifest.json",
            "out": trained_path,
        }
        argv = [arg.format(**filled, round=k) if "{" in arg else arg for arg in shlex.split(command(script))]
        assert manifest["lineage"] == {
            "kind": "lottery",
            "masks": [
                {
                    "path": str(parent),
                    "sha256": sha256(parent / "masks.safetensors"),
                    "method": json.loads((parent / "manifest.json").read_text())["method"],
                }
            ],
            "round": k,
            "trained": {"path": str(trained_path), "sha256": sha256(trained_path), "command": argv},
        }
        assert manifest["method"]["name"] == "magnitude" and manifest["source"]["sha256"] == sha256(mlp_ckpt)
        assert (out / f"round-{k}-train.log").read_text().startswith(f"training round {k} from")
        previous = masks
    assert calls(script) == [1, 2, 3]
    assert (
        cli(
            "inspect", out / "round-3", "--expect-sparsity", str(1 - 131 / 256), "--tolerance", "0", "-q"
        ).code
        == 0
    )


def test_rewind_to_an_early_checkpoint(mlp_ckpt: Path, script: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    early = save_f32(
        tmp_path / "early.safetensors",
        {n: w + rng.standard_normal(w.shape) for n, w in load_file(mlp_ckpt).items()},
    )
    run = lottery(mlp_ckpt, tmp_path / "late", command(script), rounds=2, rewind_to=early, scope="layer")
    assert [r.kept for r in run.rounds] == [
        256,
        154 + 51,
        123 + 41,
    ]  # per tensor: round(192·0.8^k), round(64·0.8^k)
    round0 = load_file(tmp_path / "late" / "round-0" / "model.safetensors")
    assert all(round0[n].tobytes() == w.tobytes() for n, w in load_file(mlp_ckpt).items())  # trains from INIT
    rewound, target = load_file(tmp_path / "late" / "round-2" / "model.safetensors"), load_file(early)
    masks = masks_of(tmp_path / "late" / "round-2")
    for name, tensor in target.items():
        expected = np.where(masks[name], tensor, 0) if name in PRUNED else tensor
        assert rewound[name].tobytes() == expected.tobytes()
    assert [int(masks[n].sum()) for n in PRUNED] == [123, 41]


def test_a_crash_is_resumed_where_it_stopped(cli, mlp_ckpt: Path, script: Path, tmp_path: Path) -> None:
    out = tmp_path / "imp"
    args = ("lottery", mlp_ckpt, "--rounds", "3", "-o", out)
    r = cli(*args, "--train", command(script, "crash-once:2"), "-q")
    log = out / "round-2-train.log"
    assert (r.code, r.out) == (3, "")
    assert r.err == (
        f"error: the training command of round 2 exited with status 7: training round 2 from "
        f"{out / 'round-1' / 'model.safetensors'} | loss is nan | crash in round 2. its output is in {log}; "
        "fix it and run the same lottery again: finished rounds are kept.\n"
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "lottery.json",
        "round-0",
        "round-1",
        "round-1-train.log",
        "round-1-trained.safetensors",
        "round-2-train.log",
    ]
    r = cli(*args, "--train", command(script, "crash-once:2"), "--json")
    assert r.code == 0, r.err
    assert [x["resumed"] for x in json.loads(r.out)["rounds"]] == [True, True, False, False]
    assert "note: round 1: finished earlier, kept\n" in r.err
    assert calls(script) == [1, 2, 2, 3]
    (script.parent / "state" / "calls.txt").unlink()
    again = tmp_path / "again"  # the same run without a crash gives the same bytes
    assert cli("lottery", mlp_ckpt, "--rounds", "3", "-o", again, "--train", command(script), "-q").code == 0
    for k in (1, 2, 3):
        for name in ("masks.safetensors", "model.safetensors"):
            assert (again / f"round-{k}" / name).read_bytes() == (out / f"round-{k}" / name).read_bytes()
    # more rounds later: the finished ones are kept, one more is trained
    r = cli("lottery", mlp_ckpt, "--rounds", "4", "-o", again, "--train", command(script), "--json")
    assert [x["resumed"] for x in json.loads(r.out)["rounds"]] == [True, True, True, True, False]


def test_other_settings_do_not_resume_and_force_starts_over(
    cli, mlp_ckpt: Path, script: Path, tmp_path: Path
) -> None:
    out = tmp_path / "imp"
    assert cli("lottery", mlp_ckpt, "--rounds", "1", "-o", out, "--train", command(script), "-q").code == 0
    r = cli("lottery", mlp_ckpt, "--rounds", "2", "--rate", "0.5", "-o", out, "--train", command(script))
    assert (r.code, r.err) == (
        2,
        f"error: {out} holds a lottery run with other settings (rate). rerun with the same "
        "settings to resume it, or pass --force to start over.\n",
    )
    r = cli(
        "lottery",
        mlp_ckpt,
        "--rounds",
        "2",
        "--rate",
        "0.5",
        "-o",
        out,
        "--train",
        command(script),
        "--force",
        "--json",
    )
    assert r.code == 0
    assert [(x["kept"], x["resumed"]) for x in json.loads(r.out)["rounds"]] == [
        (256, False),
        (128, False),
        (64, False),
    ]


def test_a_command_that_writes_nothing_or_the_wrong_shapes_exits_2(
    cli, mlp_ckpt: Path, script: Path, tmp_path: Path
) -> None:
    out = tmp_path / "imp"
    trained = out / "round-1-trained.safetensors"
    r = cli("lottery", mlp_ckpt, "--rounds", "2", "-o", out, "--train", command(script, "nothing"), "-q")
    assert (r.code, r.out, r.err) == (
        2,
        "",
        f"error: the training command of round 1 exited 0 but wrote nothing to {trained}. {OUT_HINT}\n",
    )
    r = cli("lottery", mlp_ckpt, "--rounds", "2", "-o", out, "--train", command(script, "shapes"), "-q")
    assert (r.code, r.out) == (2, "")
    assert r.err == (
        f"error: round 1: the trained weights {trained} have shape [12, 16] for fc1.weight, which is "
        f"[16, 12] in the masks. {OUT_HINT}\n"
    )
    assert not trained.exists() and not (out / "round-1").exists()  # nothing of the round is kept


@pytest.mark.parametrize(
    ("args", "err"),
    [
        (("--rate", "0"), f"error: --rate 0.0 is outside (0, 1). {RATE_HINT}\n"),
        (("--rate", "1"), f"error: --rate 1.0 is outside (0, 1). {RATE_HINT}\n"),
        (("--rate", "nan"), f"error: --rate nan is outside (0, 1). {RATE_HINT}\n"),
        (
            ("--score", "snip"),
            "error: --score snip needs a model; lottery scores the trained weights alone. use "
            "magnitude, random or lamp.\n",
        ),
    ],
)
def test_bad_settings_exit_2(
    cli, mlp_ckpt: Path, script: Path, tmp_path: Path, args: tuple[str, ...], err: str
) -> None:
    r = cli("lottery", mlp_ckpt, "--rounds", "2", "-o", tmp_path / "imp", "--train", command(script), *args)
    assert (r.code, r.out, r.err) == (2, "", err)
    assert not (tmp_path / "imp").exists()


def test_bad_commands_exit_2(cli, mlp_ckpt: Path, tmp_path: Path) -> None:
    r = cli(
        "lottery", mlp_ckpt, "--rounds", "1", "-o", tmp_path / "a", "--train", "python train.py {weights}"
    )
    assert (r.code, r.err) == (
        2,
        "error: --train 'python train.py {weights}' does not name {out}. e.g. 'python "
        "train.py {weights} {masks} {out}': the command trains {weights} and writes {out}.\n",
    )
    r = cli(
        "lottery", mlp_ckpt, "--rounds", "1", "-o", tmp_path / "b", "--train", "'unclosed {weights} {out}"
    )
    assert r.code == 2 and r.err.startswith('error: --train "\'unclosed {weights} {out}" cannot be split')
    r = cli(
        "lottery",
        mlp_ckpt,
        "--rounds",
        "1",
        "-o",
        tmp_path / "c",
        "--train",
        "no-such-program-here {weights} {out}",
    )
    assert not (tmp_path / "c").exists()  # found out before anything is written
    assert (r.code, r.err) == (
        2,
        "error: the training command 'no-such-program-here' cannot be run: not found, or "
        "not executable. give the program's path, or put it on PATH (the command runs without "
        "a shell).\n",
    )
