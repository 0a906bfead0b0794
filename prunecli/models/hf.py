"""Hugging Face transformers models: built from a folder's `config.json`, never from the hub.

A checkpoint folder that holds `config.json` is its own architecture: model-based methods build
the model with transformers (the class named by `config.architectures`), with no weights
initialised (they are read in from the checkpoint afterwards) and no network access. Code
shipped with a model (`auto_map`) runs only with `trust_remote_code`. `--arch hf:DIR` takes the
config from another folder. transformers is optional (`pip install 'prunecli[hf]'`).
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunecli.errors import InputError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

HF_PREFIX = "hf:"
CONFIG_FILE = "config.json"
INSTALL_HINT = "install the Hugging Face extra: pip install 'prunecli[hf]'"
MAX_CONFIG_BYTES = 16 << 20


def is_hf_spec(spec: str | None) -> bool:
    return spec is not None and spec.startswith(HF_PREFIX)


def config_folder(checkpoint: Path) -> Path | None:
    """The folder whose `config.json` describes `checkpoint` (the folder itself, or the folder
    of a weights file in it), or None when there is none."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return folder if (folder / CONFIG_FILE).is_file() else None


def spec_folder(spec: str) -> Path:
    """The folder of an `hf:DIR` spec, checked to hold a config."""
    folder = Path(spec[len(HF_PREFIX) :] or ".")
    if not (folder / CONFIG_FILE).is_file():
        raise InputError(
            f"`arch` {spec}: {folder} holds no {CONFIG_FILE}", "name a Hugging Face model folder",
            option="arch", value=spec,
        )  # fmt: skip
    return folder


def transformers_module() -> Any:
    """transformers, imported offline; without it a one-line usage error with the install line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers
    except ImportError:
        raise UsageError("Hugging Face model folders need the transformers package", INSTALL_HINT) from None
    transformers.logging.set_verbosity_error()
    return transformers


def load_config(folder: Path, trust_remote_code: bool = False) -> Any:
    """The folder's config; a config that needs code from the folder needs `trust_remote_code`."""
    transformers = transformers_module()
    path = folder / CONFIG_FILE
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InputError(f"{path} is over {MAX_CONFIG_BYTES >> 20} MiB", "check the model folder")
    try:
        return transformers.AutoConfig.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except ValueError as exc:
        text = str(exc)
        if "trust_remote_code" in text:
            raise UsageError(
                f"{path} asks to run code shipped with the model",
                "read that code, then pass `trust_remote_code` if you trust it",
                option="trust_remote_code",
            ) from None
        raise InputError(
            f"{path} is not a usable config ({_first_line(text)})", "check the model folder"
        ) from None
    except (OSError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path} is not a usable config ({_first_line(str(exc))})", "check the model folder"
        ) from None


def build_model(
    folder: Path,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    meta: bool = False,
    eager_attention: bool = False,
) -> nn.Module:
    """The model `folder/config.json` describes, weights left uninitialised, in `dtype`.

    `meta=True` builds it on the meta device: no memory, enough to learn module types and shapes.
    `eager_attention` asks for transformers' plain attention, which can be differentiated twice.
    Tied weights are tied, the key-value cache is off (scoring never generates), and the model
    is in eval mode.
    """
    import torch

    transformers = transformers_module()
    from transformers.initialization import no_init_weights

    config = load_config(folder, trust_remote_code)
    if eager_attention:
        config._attn_implementation = "eager"
    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names else None
    try:
        with no_init_weights(), torch.device("meta") if meta else nullcontext():
            if cls is not None:
                model = cls._from_config(config, dtype=dtype)
            elif trust_remote_code and names:
                model = transformers.AutoModelForCausalLM.from_config(
                    config, dtype=dtype, trust_remote_code=True
                )
            else:
                raise InputError(
                    f"{folder / CONFIG_FILE} names architecture {names[0] if names else '(none)'}, "
                    "which transformers does not have",
                    "upgrade transformers, or pass `trust_remote_code` for a model that ships its code",
                )
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        raise InputError(f"transformers cannot build the model of {folder} ({_first_line(str(exc))})",
                         "check the config, or the transformers version") from None  # fmt: skip
    model.tie_weights()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model.eval()


def stored_transposed(model: nn.Module) -> frozenset[str]:
    """Weights stored (in_features, out_features): those of transformers' `Conv1D` (GPT-2)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return frozenset()
    return frozenset(
        f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, Conv1D)
    )


def linear_weights(model: nn.Module) -> frozenset[str]:
    """Weights of the model's Linear and Conv1D layers (the ones Wanda and SparseGPT prune)."""
    from torch import nn

    linear = {f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    return frozenset(linear) | stored_transposed(model)


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model takes, from its config (None when it does not say)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_tokenizer(folder: Path, trust_remote_code: bool = False) -> Any:
    """The folder's tokenizer, offline."""
    transformers = transformers_module()
    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"no usable tokenizer in {folder} ({_first_line(str(exc))})",
            "save the tokenizer beside the model, or give token ids (an .npz with input_ids)",
        ) from None


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["unknown error"])[0][:160]
