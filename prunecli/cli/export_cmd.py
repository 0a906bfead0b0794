"""`prunecli export`: a sparse ONNX file, optionally verified by onnxruntime against torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from prunecli.cli import options as opt
from prunecli.cli.choices import ExportDtype
from prunecli.cli.output import emit_json, note, stderr_console, warn
from prunecli.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from prunecli.export.to_onnx import ExportReport


def export(
    path: Annotated[
        Path,
        typer.Argument(
            help="An apply output folder, its manifest.json, a Hugging Face model folder, or a checkpoint."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write (.onnx).")],
    arch: opt.Arch = None,
    arch_args: opt.ArchArgs = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    input_shape: Annotated[
        Optional[str],
        typer.Option(
            "--input-shape", help="One example's shape, e.g. 3x32x32 (default: the architecture's)."
        ),
    ] = None,
    data: Annotated[
        Optional[str],
        typer.Option(
            "--data", help="Take the input shape from this data: a file, random:SHAPE or ones:SHAPE."
        ),
    ] = None,
    static_batch: Annotated[
        Optional[int], typer.Option("--static-batch", help="Fix the batch size (default: dynamic).")
    ] = None,
    opset: Annotated[Optional[int], typer.Option("--opset", help="ONNX opset, 7 to 20 (default 20).")] = None,
    onnx_dtype: Annotated[
        ExportDtype,
        typer.Option("--onnx-dtype", help="Float type of the ONNX file: its weights, input and output."),
    ] = ExportDtype.FLOAT32,
    old_dtype: Annotated[  # the old name; in score and prune --dtype is the compute precision
        Optional[ExportDtype], typer.Option("--dtype", hidden=True, help="Deprecated: use --onnx-dtype.")
    ] = None,
    sparse_threshold: Annotated[
        float,
        typer.Option("--sparse-threshold", help="Store tensors below this density sparse (0: all dense)."),
    ] = 0.3,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Run onnxruntime on a seeded batch; exit 1 if it differs from torch."),
    ] = False,
    atol: Annotated[
        Optional[float], typer.Option("--atol", help="Absolute tolerance (default 1e-4; float16 1e-2).")
    ] = None,
    rtol: Annotated[
        Optional[float], typer.Option("--rtol", help="Relative tolerance (default 1e-3; float16 1e-2).")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=opt.MAX_SEED, help="Seed of the verification batch.")
    ] = 0,
    force: opt.Force = False,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Export to one ONNX file, sparse tensors as sparse_initializer; --verify checks it with onnxruntime.

    Needs the onnx extra: pip install 'prunecli\\[onnx]'. A Hugging Face causal language model (a folder
    with config.json) needs no --arch: its file takes int64 input_ids and attention_mask and returns logits.

    Examples:

      prunecli export out/ --arch vgg16 -o vgg16.onnx --verify

      prunecli export out/ --arch lenet-5 --static-batch 8 --onnx-dtype float16 -o lenet5.onnx

      prunecli export model.safetensors --arch resnet20 --input-shape 3x32x32 --json -o r20.onnx

      prunecli export llama-pruned/ -o llama.onnx --verify
    """
    dtype = _onnx_dtype(onnx_dtype, old_dtype)
    from prunecli.calibration.data import parse_shape
    from prunecli.export.to_onnx import ExportRequest, export_onnx
    from prunecli.models import parse_arch_args

    request = ExportRequest(
        source=path, output=output, arch=arch, arch_args=parse_arch_args(arch_args),
        input_shape=parse_shape(input_shape) if input_shape is not None else None, data=data,
        static_batch=static_batch, opset=opset, dtype=dtype.value, sparse_threshold=sparse_threshold,
        verify=verify, atol=atol, rtol=rtol, seed=seed, force=force, trust_remote_code=trust_remote_code,
    )  # fmt: skip
    report = export_onnx(request)
    for line in report.notes:
        note(line, quiet)
    if json_out:
        emit_json(report.to_dict())
    elif not quiet:
        render(report, stderr_console())
    note(f"wrote {report.output} ({report.sparse_bytes:,} bytes)", quiet)
    check = report.verification
    if check is not None and not check.passed:
        raise CheckFailed(
            f"onnxruntime differs from torch: {check.mismatched:,} of {check.values:,} output values outside "
            f"atol {check.atol:g} + rtol {check.rtol:g}·|torch| (max abs error {_num(check.max_abs_error)}, "
            f"max rel error {_num(check.max_rel_error)})",
            f"{report.output} was written for inspection; loosen --atol/--rtol only if the error is expected",
        )


def _onnx_dtype(onnx_dtype: ExportDtype, old_dtype: ExportDtype | None) -> ExportDtype:
    """--onnx-dtype, or the deprecated `export --dtype` with a warning (never both)."""
    if old_dtype is None:
        return onnx_dtype
    if onnx_dtype is not ExportDtype.FLOAT32:
        raise UsageError("--dtype and --onnx-dtype were both given", "give only --onnx-dtype")
    warn("export --dtype is deprecated (score and prune use --dtype for compute precision); use --onnx-dtype")
    return old_dtype


def _num(value: float | None) -> str:
    return "nan" if value is None else f"{value:.3g}"


def render(report: ExportReport, console: Console) -> None:
    """Draw the per-tensor storage table, the size comparison and the verification."""
    about = f"opset {report.opset}, IR {report.ir_version}, {report.dtype}, batch {report.batch}"
    table = Table(title=f"{report.output} ({about})", title_justify="left")
    headers = [("tensor", "left"), ("shape", "left"), ("nonzeros", "right"), ("density", "right"),
               ("stored", "left"), ("bytes", "right")]  # fmt: skip
    rows = [
        (t.name, "×".join(map(str, t.shape)) or "scalar", f"{t.nonzeros:,}", f"{t.density:.4f}", t.stored,
         f"{t.bytes:,}")
        for t in report.tensors
    ]  # fmt: skip
    total = ("total", "", f"{sum(t.nonzeros for t in report.tensors):,}", "", "",
             f"{sum(t.bytes for t in report.tensors):,}")  # fmt: skip
    for i, (header, justify) in enumerate(headers):
        if i == 0:  # only the names may wrap; numbers are never cut
            table.add_column(header, justify=justify, overflow="fold")
        else:
            width = max(len(header), *(len(r[i]) for r in [*rows, total]))
            table.add_column(header, justify=justify, no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    table.add_section()
    table.add_row(*total)
    console.print(table)
    sparse = sum(t.stored == "sparse" for t in report.tensors)
    sizes = f"dense {report.dense_bytes:,} bytes → sparse {report.sparse_bytes:,} bytes"
    stored = f"{sparse} of {len(report.tensors)} tensors stored sparse"
    console.print(f"{sizes}: {report.ratio:.2f}× smaller ({stored})", soft_wrap=True)
    check = report.verification
    if check is not None:
        verdict = "[green]passed[/green]" if check.passed else "[red]FAILED[/red]"
        errors = (
            f"max abs error {_num(check.max_abs_error)} (atol {check.atol:g}), "
            f"max rel error {_num(check.max_rel_error)} (rtol {check.rtol:g})"
        )
        runs = f"batch {check.batch}" if len(check.shapes) == 1 else _shapes(report, check.shapes)
        console.print(f"verify {verdict}: {check.runtime} vs torch, {runs}: {errors}", soft_wrap=True)


def _shapes(report: ExportReport, shapes: list[list[int]]) -> str:
    """ "input_ids 2×8 and 3×5": the first input's shape in each verification run."""
    name = next(iter(report.inputs), "input")
    return f"{name} " + " and ".join("×".join(map(str, shape)) for shape in shapes)
