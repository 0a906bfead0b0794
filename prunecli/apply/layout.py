"""Which output file each tensor goes to, and the files copied beside them.

The masked weights are sharded as the input was: a single file stays `model.safetensors`, and a
sharded checkpoint keeps its shard names and gets a `model.safetensors.index.json` (the names
transformers looks for). `--max-shard-size` re-shards instead, in transformers' naming
(`model-00001-of-00003.safetensors`), filling each shard in the checkpoint's order.

A Hugging Face folder's other files (config, generation config, tokenizer) are copied, so the
output loads with `from_pretrained` as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prunecli.errors import InputError, UsageError
from prunecli.io.checkpoints import WEIGHTS_FILE, WEIGHTS_INDEX, Checkpoint, resolves_inside
from prunecli.io.manifest import MANIFEST_FILE, MASKS_FILE

COPIED_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
    "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
    "preprocessor_config.json",
)  # fmt: skip
MAX_COPIED_BYTES = 256 << 20  # a tokenizer is a few MB; anything far larger is not one


@dataclass
class OutputLayout:
    """Output weights files in order, each with its tensors in order; an index when sharded."""

    shards: list[tuple[str, list[str]]]
    copied: list[Path]  # files to copy from the input folder

    @property
    def sharded(self) -> bool:
        return len(self.shards) > 1 or self.shards[0][0] != WEIGHTS_FILE

    @property
    def model_file(self) -> str:
        """The file that stands for the weights: the index when sharded."""
        return WEIGHTS_INDEX if self.sharded else WEIGHTS_FILE

    def index_bytes(self, sizes: dict[str, int]) -> bytes:
        """The index transformers reads: total size, and each tensor's shard (sorted names)."""
        weight_map = {name: shard for shard, names in self.shards for name in names}
        index = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": dict(sorted(weight_map.items())),
        }
        return (json.dumps(index, indent=2) + "\n").encode()


def output_layout(ckpt: Checkpoint, max_shard_size: int | None = None) -> OutputLayout:
    """The output files for `ckpt`: sharded like it, or by `max_shard_size` bytes."""
    if max_shard_size is not None and max_shard_size < 1:
        raise UsageError(f"`max_shard_size` {max_shard_size} must be positive", "e.g. `max_shard_size` 2GB",
                         option="max_shard_size", value=max_shard_size)  # fmt: skip
    names = list(ckpt.tensors)
    if max_shard_size is not None:
        shards = _by_size(ckpt, names, max_shard_size)
    else:
        shards = _like_input(ckpt, names)
    for shard, _ in shards:
        if shard in (MASKS_FILE, MANIFEST_FILE, WEIGHTS_INDEX):
            raise InputError(
                f"the checkpoint has a shard named {shard}, which prunecli writes itself",
                "rename that shard (and its index entries), or pass `max_shard_size`",
            )
    return OutputLayout(shards, _copied(ckpt))


def _like_input(ckpt: Checkpoint, names: list[str]) -> list[tuple[str, list[str]]]:
    shard_of = getattr(ckpt, "shard_of", None)
    if shard_of is None or not ckpt.path.name.endswith(".index.json"):
        return [(WEIGHTS_FILE, names)]
    shards: dict[str, list[str]] = {}
    for name in names:
        shards.setdefault(shard_of(name).name, []).append(name)
    return list(shards.items())


def _by_size(ckpt: Checkpoint, names: list[str], limit: int) -> list[tuple[str, list[str]]]:
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = ckpt.tensors[name].nbytes
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    if len(groups) == 1:
        return [(WEIGHTS_FILE, groups[0])]
    count = len(groups)
    return [(f"model-{i:05d}-of-{count:05d}.safetensors", group) for i, group in enumerate(groups, start=1)]


def _copied(ckpt: Checkpoint) -> list[Path]:
    """The config and tokenizer files of a Hugging Face folder (none for a bare checkpoint)."""
    folder = ckpt.config_folder
    if folder is None:
        return []
    found = []
    root = folder.resolve()
    for name in COPIED_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not resolves_inside(path, root):
            raise InputError(f"{path} is a link to a file outside the model folder",
                             "copy the file into the folder instead of linking to it")  # fmt: skip
        if path.stat().st_size > MAX_COPIED_BYTES:
            raise InputError(f"{path} is over {MAX_COPIED_BYTES >> 20} MiB", "check the model folder")
        found.append(path)
    return found
