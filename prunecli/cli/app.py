"""The `prunecli` command: wires the commands together and maps errors to exit codes."""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Annotated

import typer

from prunecli import __version__
from prunecli.cli.apply_cmd import apply
from prunecli.cli.compare_cmd import compare
from prunecli.cli.demo_cmd import demo
from prunecli.cli.eval_cmd import eval_command
from prunecli.cli.export_cmd import export
from prunecli.cli.init_cmd import init
from prunecli.cli.inspect_cmd import inspect
from prunecli.cli.intersect_cmd import intersect
from prunecli.cli.lottery_cmd import lottery
from prunecli.cli.methods_cmd import methods
from prunecli.cli.output import flag
from prunecli.cli.prune_cmd import prune
from prunecli.cli.score_cmd import score
from prunecli.distributed import Launch, launch_from_env
from prunecli.errors import EXIT_BAD_INPUT, EXIT_RUNTIME, PruneError

try:  # typer >= 0.26 vendors click: its parser errors derive from typer's public TyperException
    from typer import TyperException as ParserError
except ImportError:  # older typer depends on click
    from click.exceptions import ClickException as ParserError

app = typer.Typer(
    name="prunecli",
    help="Prune neural-network checkpoints: score weights, apply masks, inspect densities.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion; completing never imports torch
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for command in (init, score, apply, prune, inspect, compare, intersect, lottery, export, methods, demo):
    app.command(command.__name__)(command)
app.command("eval")(eval_command)
DATA_PARALLEL_COMMANDS = ("score", "prune")  # the commands every rank runs under torchrun or srun


def _version(value: bool) -> None:
    if value:
        print(f"prunecli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Prune neural-network checkpoints: score weights, apply masks, inspect densities.

    Exit codes: 0 ok, 1 a check failed, 2 bad usage or input, 3 runtime failure.
    """


def _fail(message: str, code: int) -> int:
    launch = _launch()
    where = f"rank {launch.rank} of {launch.size}: " if launch is not None else ""
    text = f"error: {where}{message}".encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    print(text, file=sys.stderr)
    return code


class Terminated(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived: unwind, so that outputs in progress are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _os_error(exc: OSError) -> int:
    """An environment fault outside our own writers (they raise PruneError): one line, no traceback."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return _fail(f"disk full{where and ' at' + where} ({exc.strerror}). Free some space or write "
                     "elsewhere with -o", EXIT_RUNTIME)  # fmt: skip
    user_fixable = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT)
    code = EXIT_BAD_INPUT if exc.errno in user_fixable else EXIT_RUNTIME
    return _fail(f"cannot use{where or ' a file'}: {exc.strerror or exc}. Check the path and its "
                 "permissions", code)  # fmt: skip


def _usage_error(exc: ParserError) -> int:
    ctx = getattr(exc, "ctx", None)  # usage errors carry the command's context; others do not
    command = ctx.command_path if ctx is not None else "prunecli"
    lines = exc.format_message().strip().splitlines()
    if not lines:  # no arguments at all: the help has been shown
        return EXIT_BAD_INPUT
    return _fail(f"{lines[0].rstrip('.')} (see '{command} --help')", EXIT_BAD_INPUT)


def _parse_and_run(argv: list[str] | None) -> int:
    """Run the Typer app; the parser's own usage errors become one line and exit 2."""
    try:
        result = app(args=argv, prog_name="prunecli", standalone_mode=False)
    except typer.Abort:
        return _fail("interrupted", 130)
    except ParserError as exc:  # bad usage the parser caught: a missing, unknown or invalid option
        return _usage_error(exc)
    except SystemExit as exc:  # shell completion (--show-completion, a completion request) ends so
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return result if isinstance(result, int) else 0


def _launch() -> Launch | None:
    """This process's place under torchrun or srun (None for a plain run, or a broken launch)."""
    try:
        return launch_from_env()
    except PruneError:
        return None


def _rank_stands_by(argv: list[str] | None) -> bool:
    """Under torchrun or srun, only `score` and `prune` run on every rank; other commands run on
    rank 0 alone, so that two ranks never write the same output."""
    launch = _launch()
    if launch is None or launch.rank == 0:
        return False
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), None)
    return command not in DATA_PARALLEL_COMMANDS


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; every failure is one stderr line."""
    debug = os.environ.get("PRUNECLI_DEBUG") == "1"
    if _rank_stands_by(argv):
        return 0
    try:
        return _parse_and_run(argv)
    except PruneError as exc:
        if debug:
            raise
        return _fail(exc.one_line(parameter=flag), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Terminated as exc:
        name = signal.Signals(exc.signum).name
        return _fail(f"interrupted by {name}; outputs in progress were removed", 128 + exc.signum)
    except MemoryError:
        return _fail("out of memory. Use a smaller model, or a machine with more memory.", EXIT_RUNTIME)
    except OSError as exc:
        if debug:
            raise
        return _os_error(exc)
    except Exception as exc:  # the last line of defence: never a traceback
        if debug:
            raise
        return _fail(f"internal error: {exc.__class__.__name__}: {exc}. Rerun with PRUNECLI_DEBUG=1 "
                     "and report the traceback.", EXIT_RUNTIME)  # fmt: skip


def main() -> None:
    """Console-script entry point: SIGINT, SIGTERM and SIGHUP end the run cleanly, exit 128+N."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup and background jobs stay immune
            signal.signal(signum, _raise_terminated)
    sys.exit(run())
