"""Non-conforming safetensors headers, hostile sharded indexes and pickled `.pt` files exit 2.

Each bad file is built byte by byte, then run through `inspect` and `apply`: both must exit 2
with one stderr line that names the problem, write no output and leave no temporary file.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

Cli = Callable[..., Any]  # the `cli` fixture of conftest.py: returns (code, out, err)
HINT = "re-save it with the safetensors library"


def entry(dtype: str, shape: list, start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def good_header() -> dict:
    """fc1.weight F32[4, 6] (96 bytes), fc1.bias F32[4] (16), fc2.weight F32[2, 4] (32): 144 bytes."""
    return {
        "__metadata__": {"format": "pt"},
        "fc1.weight": entry("F32", [4, 6], 0, 96),
        "fc1.bias": entry("F32", [4], 96, 112),
        "fc2.weight": entry("F32", [2, 4], 112, 144),
    }


def data_bytes(size: int = 144) -> bytes:
    """Finite float32 values (any trailing bytes that do not fill a float are zeros)."""
    values = np.linspace(-1, 1, size // 4, dtype=np.float32).tobytes()
    return values + bytes(size - len(values))


def st_file(path: Path, header: dict | str | bytes, data: bytes | None = None) -> Path:
    """Write `header` (a dict, JSON text as written, or raw bytes) and `data` as a safetensors file."""
    if isinstance(header, dict):
        header = json.dumps(header)
    raw = header.encode("utf-8", "surrogatepass") if isinstance(header, str) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + (data_bytes() if data is None else data))
    return path


def snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def refused(cli: Cli, root: Path, target: Path, *words: str) -> str:
    """`inspect` and `apply` both exit 2 with one `error:` line holding `words`; nothing is written.

    An index is run through `score` instead of `inspect`, which reads any `.json` as a manifest.
    """
    before, out = snapshot(root), root / "OUT"
    first = ["inspect", target]
    if target.name.endswith(".index.json"):
        first = ["score", target, "-m", "magnitude", "-o", root / "scores.safetensors"]
    messages = []
    for args in (first, ["apply", target, "-m", "magnitude", "-s", "0.5", "-o", out]):
        r = cli(*args)
        assert r.code == 2, (args[0], r.err)
        assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
        assert "Traceback" not in r.err and "internal error" not in r.err
        for word in words:
            assert word in r.err, (word, r.err)
        messages.append(r.err)
        assert not out.exists()
        assert snapshot(root) == before, snapshot(root) - before
    assert messages[0] == messages[1]
    return messages[0]


def passes(cli: Cli, root: Path, target: Path) -> None:
    out = root / "OUT"
    assert cli("inspect", target).code == 0  # an index is a checkpoint, never a manifest
    r = cli("apply", target, "-m", "magnitude", "-s", "0.5", "-o", out)
    assert r.code == 0, r.err
    weights = {"model.safetensors"}
    if target.name.endswith(".index.json"):  # sharded like the input: its shards and an index
        weights = {"model.safetensors.index.json", *json.loads(target.read_text())["weight_map"].values()}
    assert {p.name for p in out.iterdir()} == weights | {"masks.safetensors", "manifest.json"}
    assert cli("inspect", out).code == 0


# --- valid files still pass ---------------------------------------------------------------------


def test_the_helper_builds_a_valid_file(cli: Cli, tmp_path: Path) -> None:
    passes(cli, tmp_path, st_file(tmp_path / "m.safetensors", good_header()))


def test_prunecli_init_output_passes(cli: Cli, tmp_path: Path) -> None:
    init = tmp_path / "init.safetensors"
    assert cli("init", "--arch", "lenet-300-100", "-o", init).code == 0
    passes(cli, tmp_path, init)


def test_safetensors_library_output_with_a_zero_size_tensor_passes(cli: Cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "fc1.weight": rng.standard_normal((8, 6)).astype(np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "also_empty": np.zeros((5, 0), np.float16),
        "fc1.bias": np.zeros(8, np.float32),
        "scalar": np.array(2.0, np.float32),
    }
    save_file(tensors, tmp_path / "lib.safetensors", metadata={"format": "np"})
    passes(cli, tmp_path, tmp_path / "lib.safetensors")


def test_metadata_null_and_unicode_names_pass(cli: Cli, tmp_path: Path) -> None:
    header = good_header()
    header["__metadata__"] = None
    header["schicht.gewicht.ü"] = header.pop("fc2.weight")
    passes(cli, tmp_path, st_file(tmp_path / "m.safetensors", header))


# --- rule 1: tensors cover the data section exactly, in order, without overlaps ----------------


def _overlap(h: dict) -> None:
    h["fc1.bias"]["data_offsets"] = [88, 104]  # starts inside fc1.weight
    h["fc2.weight"]["data_offsets"] = [104, 136]


def _shifted(h: dict) -> None:
    for name, (start, end) in [(n, h[n]["data_offsets"]) for n in ("fc1.weight", "fc1.bias", "fc2.weight")]:
        h[name]["data_offsets"] = [start + 4, end + 4]


def _hole(h: dict) -> None:
    h["fc2.weight"]["data_offsets"] = [120, 152]


LAYOUTS: dict[str, tuple[Callable[[dict], None], int, str]] = {
    "overlap": (_overlap, 144, "overlaps tensor 'fc1.weight'"),
    "shifted by 4 bytes": (_shifted, 148, "bytes 0 to 4 of the data section belong to no tensor"),
    "hole": (_hole, 152, "bytes 112 to 120 of the data section belong to no tensor"),
    "trailing bytes": (lambda h: None, 150, "6 bytes follow the last tensor 'fc2.weight'"),
    "past the end": (lambda h: None, 140, "tensor 'fc2.weight' ends at byte 144, past the data's 140 bytes"),
    "size mismatch": (
        lambda h: h["fc1.bias"].update(shape=[5]),
        144,
        "tensor 'fc1.bias' is F32[5] (20 bytes) but its data_offsets [96, 112] hold 16 bytes",
    ),
    "end before start": (
        lambda h: h["fc1.bias"].update(data_offsets=[112, 96]),
        144,
        "data_offsets [112, 96], which end before they start",
    ),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_offsets_must_tile_the_data_section(cli: Cli, tmp_path: Path, case: str) -> None:
    change, size, words = LAYOUTS[case]
    header = good_header()
    change(header)
    path = st_file(tmp_path / "m.safetensors", header, data_bytes(size))
    refused(cli, tmp_path, path, str(path), "is not a valid safetensors file", words)


def test_no_tensors_but_data_bytes(cli: Cli, tmp_path: Path) -> None:
    path = st_file(tmp_path / "m.safetensors", {"__metadata__": {"a": "b"}}, b"\0" * 8)
    refused(cli, tmp_path, path, "8 bytes follow the header (it names no tensor)")


# --- rule 2: no key twice, at any level ----------------------------------------------------------

W = '{"dtype":"F32","shape":[4,6],"data_offsets":[0,96]}'
REST = '"fc1.bias":{"dtype":"F32","shape":[4],"data_offsets":[96,112]},' + (
    '"fc2.weight":{"dtype":"F32","shape":[2,4],"data_offsets":[112,144]}'
)
DUPLICATES = {
    "tensor name": (
        '{"fc1.weight":' + W + ',"fc1.weight":' + W + "," + REST + "}",
        "the key 'fc1.weight' appears twice",
    ),
    "inside __metadata__": (
        '{"__metadata__":{"k":"a","k":"b"},"fc1.weight":' + W + "," + REST + "}",
        "the key 'k' appears twice inside '__metadata__'",
    ),
    "inside an entry": (
        '{"fc1.weight":{"dtype":"F32","dtype":"F16","shape":[4,6],"data_offsets":[0,96]},' + REST + "}",
        "the key 'dtype' appears twice inside 'fc1.weight'",
    ),
    "__metadata__ twice": (
        '{"__metadata__":{},"__metadata__":{"k":"v"},"fc1.weight":' + W + "," + REST + "}",
        "the key '__metadata__' appears twice",
    ),
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_duplicate_keys_are_refused(cli: Cli, tmp_path: Path, case: str) -> None:
    text, words = DUPLICATES[case]
    json.loads(text)  # json.loads itself accepts it, silently keeping the last value
    path = st_file(tmp_path / "m.safetensors", text)
    refused(cli, tmp_path, path, "in its header", words, HINT)


# --- rule 3: plain non-negative JSON integers; exact entries --------------------------------------

SHAPE_TEXT = {
    "float": ("[4.0, 6]", "has shape [4.0, 6]"),
    "fraction": ("[300.7, 784]", "has shape [300.7, 784]"),
    "bool": ("[true, 6]", "has shape [true, 6]"),
    "strings": ('["4", "6"]', 'has shape ["4", "6"]'),
    "1e400": ("[1e400, 6]", "has shape [Infinity, 6]"),
    "negative": ("[-4, -6]", "has shape [-4, -6]"),
    "huge": (f"[{10**30}, {10**30}]", "has shape [1000000000000000000000000000000, 10000000000000"),
    "null": ("null", "has shape null"),
    "not a list": ("24", "has shape 24"),
}


@pytest.mark.parametrize("case", list(SHAPE_TEXT))
def test_shapes_must_be_non_negative_integers(cli: Cli, tmp_path: Path, case: str) -> None:
    shape, words = SHAPE_TEXT[case]
    text = json.dumps(good_header()).replace("[4, 6]", shape, 1)
    path = st_file(tmp_path / "m.safetensors", text)
    refused(cli, tmp_path, path, "tensor 'fc1.weight'", words, "non-negative integers", HINT)


OFFSET_TEXT = {
    "floats": "[0.0, 96.0]",
    "bools": "[false, 96]",
    "strings": '["0", "96"]',
    "1e400": "[0, 1e400]",
    "negative": "[-96, 0]",
    "huge": f"[0, {2**64 + 96}]",
    "three": "[0, 48, 96]",
    "one": "[96]",
}


@pytest.mark.parametrize("case", list(OFFSET_TEXT))
def test_offsets_must_be_two_non_negative_integers(cli: Cli, tmp_path: Path, case: str) -> None:
    text = json.dumps(good_header()).replace("[0, 96]", OFFSET_TEXT[case], 1)
    path = st_file(tmp_path / "m.safetensors", text)
    refused(cli, tmp_path, path, "tensor 'fc1.weight' has data_offsets", "two non-negative integers", HINT)


def test_1e400_parses_to_infinity_and_no_int_of_it_is_taken() -> None:
    assert json.loads("[1e400]") == [float("inf")]  # int(inf) would raise OverflowError: exit 3


def test_a_zero_size_shape_too_large_for_numpy_is_refused(cli: Cli, tmp_path: Path) -> None:
    header = good_header()
    header["ghost"] = entry("F32", [2**62, 0], 144, 144)  # 0 bytes, but numpy refuses the shape
    path = st_file(tmp_path / "m.safetensors", header)
    refused(cli, tmp_path, path, "tensor 'ghost' has shape [4611686018427387904, 0], too large for any array")


def test_a_number_with_thousands_of_digits_is_refused(cli: Cli, tmp_path: Path) -> None:
    text = json.dumps(good_header()).replace("[4, 6]", "[4" + "0" * 5000 + ", 6]", 1)
    path = st_file(tmp_path / "m.safetensors", text)
    refused(cli, tmp_path, path, "the header is not JSON: it holds a number with too many digits")


ENTRY_CHANGES: dict[str, tuple[Callable[[dict], None], str]] = {
    "unknown key": (lambda e: e.update(offset=0), "has the unknown key 'offset'"),
    "missing dtype": (lambda e: e.pop("dtype"), "has no 'dtype'"),
    "missing data_offsets": (lambda e: e.pop("data_offsets"), "has no 'data_offsets'"),
    "unknown dtype": (lambda e: e.update(dtype="F33"), "has the unsupported dtype 'F33'"),
    "dtype not a string": (lambda e: e.update(dtype=4), "has the unsupported dtype 4"),
}


@pytest.mark.parametrize("case", list(ENTRY_CHANGES))
def test_entries_hold_exactly_dtype_shape_and_offsets(cli: Cli, tmp_path: Path, case: str) -> None:
    change, words = ENTRY_CHANGES[case]
    header = good_header()
    change(header["fc1.bias"])
    path = st_file(tmp_path / "m.safetensors", header)
    refused(cli, tmp_path, path, "tensor 'fc1.bias'", words, HINT)


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("[]", "the header is not a JSON object"),
        ('"fc1.weight"', "the header is not a JSON object"),
        ('{"fc1.weight": NaN}', "in its header, NaN is not a JSON value"),
        ('{"fc1.weight": [1, 2', "the header is not JSON: it is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "the header is not JSON: it nests arrays or objects too deeply"),
        (b'{"fc1.weight\xff": {}}', "the header is not JSON (it is not UTF-8 text)"),
        ('{"fc1.weight": 3}', "tensor 'fc1.weight' is not a JSON object"),
        ('{"__metadata__": {"n": 1}}', "__metadata__ must map strings to strings"),
        ('{"__metadata__": []}', "__metadata__ must map strings to strings"),
    ],
    ids=["list", "string", "NaN", "cut", "deep", "not-utf8", "entry", "metadata-number", "metadata-list"],
)
def test_the_header_must_be_a_utf8_json_object(
    cli: Cli, tmp_path: Path, header: str | bytes, words: str
) -> None:
    refused(cli, tmp_path, st_file(tmp_path / "m.safetensors", header, b""), words)


def test_header_length_prefix_over_the_limit_does_not_echo_bytes(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")  # looks like /etc/passwd
    message = refused(cli, tmp_path, path, "header length is over the 100 MiB limit")
    assert "root" not in message.replace(str(tmp_path), "")
    assert str(struct.unpack("<Q", b"root:x:0")[0]) not in message


# --- rule 4: names and metadata must be Unicode text --------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('"fc1.weight"', '"fc1.weight\\ud800"', "the key 'fc1.weight\\ud800' is not Unicode text"),
        ('"fc2.weight"', '"\\udc80"', "the key '\\udc80' is not Unicode text"),
        (
            '"format"',
            '"\\ud800format"',
            "the key '\\ud800format' is not Unicode text (a lone surrogate) inside",
        ),
        ('"pt"', '"\\udfff"', "the string '\\udfff' is not Unicode text (a lone surrogate) inside 'format'"),
        ('"F32"', '"F3\\ud800"', "the string 'F3\\ud800' is not Unicode text"),
    ],
    ids=["name", "whole-name", "metadata-key", "metadata-value", "dtype"],
)
def test_lone_surrogates_are_refused(cli: Cli, tmp_path: Path, old: str, new: str, words: str) -> None:
    text = json.dumps(good_header()).replace(old, new, 1)
    assert new in text
    path = st_file(tmp_path / "m.safetensors", text)
    refused(cli, tmp_path, path, "in its header", words)


def test_pt_key_that_is_not_unicode_is_refused(cli: Cli, tmp_path: Path) -> None:
    torch.save({"fc1.weight\ud800": torch.ones(4, 6), "fc1.bias": torch.zeros(4)}, tmp_path / "m.pt")
    refused(
        cli,
        tmp_path,
        tmp_path / "m.pt",
        "holds a tensor under the key 'fc1.weight\\ud800', which is not Unicode",
    )


def test_pt_key_that_is_not_a_string_is_refused(cli: Cli, tmp_path: Path) -> None:
    torch.save({"fc1.weight": torch.ones(4, 6), 3: torch.zeros(4)}, tmp_path / "m.pt")
    refused(cli, tmp_path, tmp_path / "m.pt", "holds a tensor under the key of type int, which is not a name")


# --- rule 5: sharded indexes ---------------------------------------------------------------------


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    """model/ with two shards and a valid index; outside/ next to it holds a valid safetensors file."""
    model, outside = tmp_path / "model", tmp_path / "outside"
    model.mkdir()
    outside.mkdir()
    rng = np.random.default_rng(0)
    save_file({"fc1.weight": rng.standard_normal((8, 6)).astype(np.float32)}, model / "m-1.safetensors")
    save_file({"fc2.weight": rng.standard_normal((4, 8)).astype(np.float32)}, model / "m-2.safetensors")
    save_file({"fc9.weight": np.ones((4, 4), np.float32)}, outside / "x.safetensors")
    save_file({"fc9.weight": np.ones((4, 4), np.float32)}, tmp_path / "x.safetensors")
    index(model, {"fc1.weight": "m-1.safetensors", "fc2.weight": "m-2.safetensors"})
    return model


def index(folder: Path, weight_map: dict | str) -> Path:
    path = folder / "m.safetensors.index.json"
    text = (
        weight_map if isinstance(weight_map, str) else json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    path.write_text(text)
    return path


def test_a_valid_index_passes(cli: Cli, sharded: Path) -> None:
    passes(cli, sharded.parent, sharded / "m.safetensors.index.json")


def test_a_link_to_a_shard_inside_the_folder_passes(cli: Cli, sharded: Path) -> None:
    (sharded / "sub").mkdir()
    (sharded / "m-2.safetensors").rename(sharded / "sub" / "real.safetensors")
    (sharded / "m-2.safetensors").symlink_to(Path("sub") / "real.safetensors")
    passes(cli, sharded.parent, sharded / "m.safetensors.index.json")


@pytest.mark.parametrize(
    "shard",
    ["../x.safetensors", "/etc/passwd", "../outside/x.safetensors", "sub/m-1.safetensors",
     "..\\x.safetensors", "", "m-1.bin", "C:m-1.safetensors", "m-1\u0000.safetensors", 7, None,
     ["m-1.safetensors"]],
    ids=["parent", "etc-passwd", "sibling-folder", "subfolder", "backslash", "empty", "suffix", "drive",
         "nul", "number", "null", "list"],
)  # fmt: skip
def test_shards_must_be_plain_names_in_the_folder(cli: Cli, sharded: Path, shard: object) -> None:
    path = index(sharded, {"fc1.weight": "m-1.safetensors", "fc2.weight": shard})
    message = refused(
        cli, sharded.parent, path, "maps tensor 'fc2.weight' to", "not to a file name in the index's folder"
    )
    assert "root:" not in message


def test_a_shard_linking_out_of_the_folder_is_refused(cli: Cli, sharded: Path) -> None:
    (sharded / "m-2.safetensors").unlink()
    (sharded / "m-2.safetensors").symlink_to(sharded.parent / "outside" / "x.safetensors")
    path = sharded / "m.safetensors.index.json"
    refused(cli, sharded.parent, path, "m-2.safetensors", "is a link to a file outside the index's folder")


def test_a_shard_linking_to_etc_passwd_is_refused_without_echo(cli: Cli, sharded: Path) -> None:
    (sharded / "m-2.safetensors").unlink()
    (sharded / "m-2.safetensors").symlink_to("/etc/passwd")
    message = refused(cli, sharded.parent, sharded / "m.safetensors.index.json", "outside the index's folder")
    assert "root" not in message.replace(str(sharded), "")


def test_a_shard_that_is_not_safetensors_is_refused_without_echo(cli: Cli, sharded: Path) -> None:
    (sharded / "m-2.safetensors").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    message = refused(cli, sharded.parent, sharded / "m.safetensors.index.json", "m-2.safetensors")
    assert "root" not in message.replace(str(sharded), "")


@pytest.mark.parametrize(
    ("weight_map", "words"),
    [
        (
            {"fc1.weight": "m-2.safetensors", "fc2.weight": "m-2.safetensors"},
            "maps tensor 'fc1.weight' to m-2.safetensors, which does not hold it",
        ),
        (
            {"fc1.weight": "m-2.safetensors", "fc2.weight": "m-1.safetensors"},
            "maps tensor 'fc1.weight' to m-2.safetensors, but shard m-1.safetensors holds it",
        ),
        (
            {
                "fc1.weight": "m-1.safetensors",
                "fc2.weight": "m-2.safetensors",
                "fc3.weight": "m-2.safetensors",
            },
            "maps tensor 'fc3.weight' to m-2.safetensors, which does not hold it",
        ),
    ],
    ids=["listed-in-a-shard-without-it", "swapped", "extra-name"],
)
def test_the_weight_map_must_agree_with_the_shards(
    cli: Cli, sharded: Path, weight_map: dict, words: str
) -> None:
    refused(cli, sharded.parent, index(sharded, weight_map), words, "fix the index")


def test_a_shard_tensor_missing_from_the_weight_map_is_refused(cli: Cli, sharded: Path) -> None:
    extra = {"fc1.weight": np.ones((8, 6), np.float32), "fc3.weight": np.ones((4, 8), np.float32)}
    save_file(extra, sharded / "m-1.safetensors")
    path = sharded / "m.safetensors.index.json"
    refused(
        cli, sharded.parent, path, "shard m-1.safetensors holds tensor 'fc3.weight', which", "does not list"
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '{"weight_map": {"fc1.weight": "m-1.safetensors", "fc1.weight": "m-2.safetensors"}}',
            "the key 'fc1.weight' appears twice inside 'weight_map'",
        ),
        (
            '{"weight_map": {}, "weight_map": {"fc1.weight": "m-1.safetensors"}}',
            "the key 'weight_map' appears twice",
        ),
        ('{"weight_map": {}}', "it has no weight_map entries"),
        ('{"weight_map": ["m-1.safetensors"]}', "it has no weight_map entries"),
        ("[]", "it has no weight_map entries"),
        ('{"weight_map": {"fc1.weight": "m-1.safetens', "it is not valid JSON"),
        (
            '{"weight_map": {"fc1.weight\\ud800": "m-1.safetensors"}}',
            "the key 'fc1.weight\\ud800' is not Unicode",
        ),
    ],
    ids=["duplicate-name", "duplicate-weight-map", "empty", "list", "not-object", "cut", "surrogate"],
)
def test_the_index_must_be_strict_json(cli: Cli, sharded: Path, text: str, words: str) -> None:
    refused(cli, sharded.parent, index(sharded, text), "is not a safetensors index", words)


def test_an_index_that_is_not_utf8_is_refused(cli: Cli, sharded: Path) -> None:
    path = sharded / "m.safetensors.index.json"
    path.write_bytes(b'{"weight_map": {"\xff": "m-1.safetensors"}}')
    refused(cli, sharded.parent, path, "is not a safetensors index: it is not UTF-8 text")


# --- rule 6: pickled .pt files -------------------------------------------------------------------


class Payload:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def pt_refused(cli: Cli, root: Path, target: Path, *words: str) -> str:
    with warnings.catch_warnings(record=True) as caught:  # pytest would hide a warning from capsys
        warnings.simplefilter("always")
        message = refused(cli, root, target, *words)
    assert [str(w.message) for w in caught] == []
    assert "Weights only load failed" not in message and "…" not in message
    assert message.rstrip().endswith("safetensors.") and message.count("(") == message.count(")")
    return message


@pytest.mark.parametrize("protocol", [2, 4])
def test_raw_pickle_of_tensors_is_refused_without_torch_warnings(
    cli: Cli, tmp_path: Path, protocol: int
) -> None:
    with (tmp_path / "m.pt").open("wb") as f:
        pickle.dump({"w": torch.zeros(2, 2)}, f, protocol=protocol)
    words = (
        "torch.storage._load_from_bytes: it was written with pickle.dump" if protocol == 2 else "opcode 149"
    )
    pt_refused(
        cli, tmp_path, tmp_path / "m.pt", "holds pickled objects that are not plain tensors; refused", words
    )


@pytest.mark.parametrize("how", ["torch.save", "pickle-2", "pickle-4"])
def test_pickled_code_is_refused_and_never_run(cli: Cli, tmp_path: Path, how: str) -> None:
    marker = tmp_path.parent / f"{tmp_path.name}-payload-ran"
    obj = {"x": Payload(marker), "w": torch.ones(2, 2)}  # the payload first: it is what is reached
    if how == "torch.save":
        torch.save(obj, tmp_path / "evil.pt")
    else:
        with (tmp_path / "evil.pt").open("wb") as f:
            pickle.dump(obj, f, protocol=int(how[-1]))
    words = (
        "opcode 149"
        if how == "pickle-4"
        else "it refers to posix.system, which weights-only loading does not"
    )
    message = pt_refused(cli, tmp_path, tmp_path / "evil.pt", "refused to load them", words)
    assert not marker.exists()
    assert "nothing was run" in message


def test_damaged_pt_gives_a_complete_message(cli: Cli, tmp_path: Path) -> None:
    torch.save({"w": torch.ones(64, 64)}, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    pt_refused(cli, tmp_path, tmp_path / "m.pt", "not a readable torch checkpoint (")
    (tmp_path / "m.pt").write_bytes(data[:100])
    message = pt_refused(cli, tmp_path, tmp_path / "m.pt", "not a readable torch checkpoint")
    assert "(PytorchStreamReader failed reading zip archive: failed finding central directory)" in message
    (tmp_path / "m.pt").write_bytes(b"")
    pt_refused(cli, tmp_path, tmp_path / "m.pt", "not a readable torch checkpoint (the file ends too early)")


def test_a_whole_pickled_model_is_refused_naming_its_class(cli: Cli, tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(6, 4), tmp_path / "model.pt")
    pt_refused(cli, tmp_path, tmp_path / "model.pt", "torch.nn.modules.linear.Linear: a whole model")
