"""The user's training command, as `lottery` runs it: split without a shell, placeholders filled
in, output logged and echoed, and what it wrote checked before anything of its round is kept."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prunecli.errors import CommandFailed, InputError, UsageError
from prunecli.io.checkpoints import open_checkpoint
from prunecli.io.mask_sets import PackedMasks

TAIL_LINES = 3  # lines of a failed command's output quoted in the error
TAIL_CHARS = 300
STOP_WAIT_S = 5  # after terminating an interrupted command, before killing it
_HINT_OUT = "write the trained weights (the whole state dict, as safetensors) to the {out} argument"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class TrainCommand:
    """The training command: its arguments, with `{weights}`, `{masks}`, `{out}` and `{round}`
    replaced in each one (no shell: quoting is `shlex.split`'s)."""

    template: str
    args: tuple[str, ...]

    @classmethod
    def parse(cls, template: str) -> TrainCommand:
        try:
            args = tuple(shlex.split(template))
        except ValueError as exc:
            raise UsageError(
                f"`train` {template!r} cannot be split into arguments ({exc})",
                "balance its quotes",
                option="train",
                value=template,
            ) from None
        for placeholder in ("{weights}", "{out}"):
            if not any(placeholder in arg for arg in args):
                raise UsageError(
                    f"`train` {template!r} does not name {placeholder}",
                    "e.g. 'python train.py {weights} {masks} {out}': the command trains {weights} and "
                    "writes {out}",
                    option="train",
                    value=template,
                )
        if "{" not in args[0] and shutil.which(args[0]) is None:
            raise _cannot_run(args[0], "not found, or not executable")
        return cls(template, args)

    def argv(self, **values: object) -> list[str]:
        out = []
        for arg in self.args:
            for key, value in values.items():
                arg = arg.replace("{" + key + "}", str(value))
            out.append(arg)
        return out


def run_command(argv: list[str], log_path: Path, k: int, echo: Echo | None) -> None:
    """Run `argv` (no shell), its output to `log_path` and `echo`; a non-zero exit raises
    CommandFailed quoting the end of the output. An interrupt stops the command too."""
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
        raise _cannot_run(argv[0], exc.strerror) from None
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        with log_path.open("wb") as log:
            for line in proc.stdout:
                log.write(line)
                text = line.decode("utf-8", "replace")
                if echo is not None:
                    echo(text)
                if text.strip():
                    tail.append(text.strip())
        code = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    finally:
        proc.stdout.close()
    if code != 0:
        how = f"exited with status {code}" if code > 0 else f"was stopped by {signal.Signals(-code).name}"
        said = " | ".join(tail)
        said = said if len(said) <= TAIL_CHARS else "…" + said[-TAIL_CHARS:]
        raise CommandFailed(
            f"the training command of round {k} {how}" + (f": {said}" if said else " and printed nothing"),
            f"its output is in {log_path}; fix it and run the same lottery again: finished rounds are kept",
            option="train",
            value=code,
        )


def _cannot_run(program: str, why: str) -> UsageError:
    return UsageError(
        f"the training command {program!r} cannot be run: {why}",
        "give the program's path, or put it on PATH (the command runs without a shell)",
        option="train",
        value=program,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_trained(trained: Path, masks: PackedMasks, k: int) -> None:
    """The command wrote a readable checkpoint with every masked tensor in its shape; otherwise it
    is removed (nothing of the round is kept) and InputError says what was wrong."""
    if not trained.is_file():
        raise InputError(
            f"the training command of round {k} exited 0 but wrote nothing to {trained}", _HINT_OUT
        )
    try:
        with open_checkpoint(trained) as ckpt:
            tensors = dict(ckpt.tensors)
    except InputError as exc:
        trained.unlink(missing_ok=True)
        raise InputError(
            f"round {k}: the trained weights {trained} cannot be read: {exc.message}", _HINT_OUT
        ) from None
    for name in masks.names:
        info, shape = tensors.get(name), masks.shapes[name]
        if info is None or info.shape != shape:
            trained.unlink(missing_ok=True)
            found = "no such tensor" if info is None else f"shape {list(info.shape)}"
            raise InputError(
                f"round {k}: the trained weights {trained} have {found} for {name}, which is "
                f"{list(shape)} in the masks",
                _HINT_OUT,
            )
