"""SparseGPT: one-shot pruning with an OBS weight update, solved layer by layer (Frantar & Alistarh
2023, ICML, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot").

Data: the layer's inputs over calibration tokens (forward passes only, no labels), reduced to the
Hessian of the layer-wise reconstruction loss H = 2/n · Σ_t x_t x_tᵀ (`HessianAccumulator`).
`sparsegpt_solve` then runs the paper's Algorithm 1 on the weight W (out, in): the inverse
Hessian's upper Cholesky factor U (H⁻¹ = UᵀU), a left-to-right sweep over the columns in blocks
with lazy batched updates, the mask chosen adaptively from the OBS saliency w²/U_jj² (per block
of columns, or per group of M columns for N:M), and each pruned weight's error folded into the
columns to its right. The result is the updated weight (pruned entries exactly 0) and its mask,
not scores: unlike prunecli's other methods, SparseGPT changes the weights it keeps.

Our choices where the reference code leaves room (methods.md §9):
- Counts. Unstructured: the layer keeps exactly round(rows·cols·density) weights (prunecli's
  `keep_count`). Block b keeps round(rows·end_b·d) − round(rows·start_b·d), its share of the
  running total, so every block keeps its fraction to within one weight and the blocks add up to
  the layer's count. The reference keeps everything above a threshold, which prunes
  int(entries·s)+1 per block plus every tie at the threshold. N:M: exactly N of every M
  consecutive inputs of every output are kept.
- Ties. Within a block, equal saliencies are pruned lowest flat index (row-major in the
  (out, in) layout) first; within an N:M group, lowest column first. Same inputs give
  bit-identical outputs on one device.
- Dead inputs (H_jj = 0: the feature was zero on every token) get H_jj = 1 and their weights
  are set to 0 and counted as pruned, always, and first: they take part of the block's prune
  count (or of the group's M−N). If more than that are dead, the block or group is sparser
  than asked. When nothing is to be pruned at all (density 1, or N = M) the layer is returned
  untouched, dead inputs included.
- Damping λ = damp·mean(diag H) (dead entries already set to 1). When the Cholesky factorisation
  fails, `damp` is multiplied by 10 and it is tried again, up to `MAX_RETRIES` times; then a
  `ScoreError` names the layer. (The reference falls back to H⁻¹ = I, i.e. magnitude pruning.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunecli.errors import ScoreError, UsageError
from prunecli.scoring.options import MethodOptions, check_counts
from prunecli.scoring.registry import Method, register_method
from prunecli.selection.threshold import keep_count

if TYPE_CHECKING:
    import torch

MAX_RETRIES = 3  # damping tries: damp, 10·damp, 100·damp, 1000·damp
RETRY_DAMP = 0.01  # the first retry when `damp` is 0


class HessianAccumulator:
    """H = 2/n · Σ x xᵀ over every calibration token of a layer's input, in float32.

    Kept as a running mean over the tokens seen so far (as the reference does over samples),
    so the scale does not grow with the amount of data. Inputs are (..., columns): every
    leading dimension counts as tokens (a Conv2d's input must be unfolded by the caller).

    Example:
        >>> acc = HessianAccumulator(4, torch.device("cpu"), name="fc1")
        >>> acc.add(torch.ones(2, 3, 4))
        >>> acc.tokens, acc.hessian[0, 0].item()
        (6, 2.0)
    """

    def __init__(self, columns: int, device: torch.device | str, name: str = "") -> None:
        import torch

        self.name = name
        self.tokens = 0
        self._sum = torch.zeros(columns, columns, dtype=torch.float32, device=device)  # (in, in)

    def add(self, inputs: torch.Tensor) -> None:
        """Fold one batch of inputs (..., columns), any float dtype, into the running mean.

        Raises ScoreError (exit 3) naming the layer when the batch holds NaN or Inf.
        """
        import torch

        columns = self._sum.shape[0]
        if inputs.shape[-1:] != (columns,):
            raise UsageError(
                f"inputs of {_layer(self.name)} have {tuple(inputs.shape)}; expected (..., {columns})",
                "pass the layer's input activations, with a Conv2d's input unfolded",
            )
        x = inputs.detach().reshape(-1, columns).to(device=self._sum.device, dtype=torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise ScoreError(
                f"NaN or infinite activations reach {_layer(self.name)}",
                "check the checkpoint and the calibration data, or compute in float32",
            )
        if x.shape[0] == 0:
            return
        total = self.tokens + x.shape[0]
        self._sum.mul_(self.tokens / total).addmm_(x.t(), x, alpha=2.0 / total)
        self.tokens = total

    def add_across_ranks(self) -> None:
        """Make this the mean over every rank's tokens (data-parallel calibration); a no-op in
        one process. Every rank calls it for the same layers in the same order."""
        import torch

        from prunecli.distributed import active, add_across

        if not active():
            return
        tokens = torch.tensor([float(self.tokens)], dtype=torch.float64, device=self._sum.device)
        self._sum.mul_(float(self.tokens))
        add_across([self._sum, tokens])
        self.tokens = int(tokens.item())
        if self.tokens:
            self._sum.div_(float(self.tokens))

    @property
    def hessian(self) -> torch.Tensor:
        """(columns, columns) float32: the live buffer, not a copy (`sparsegpt_solve` never edits it).

        Raises ScoreError when no token was seen: a layer that never ran has no Hessian.
        """
        if self.tokens == 0:
            raise ScoreError(
                f"{_layer(self.name)} saw no calibration tokens, so it has no Hessian",
                "check that the calibration data reaches it, or leave it out of the pruned layers",
            )
        return self._sum


@dataclass
class SolveResult:
    """What `sparsegpt_solve` returns.

    weight: the updated weight, same shape and dtype as the input, pruned entries exactly 0.
    mask: bool keep-mask, same shape (False = pruned).
    damping: the damping fraction actually used (λ = damping · mean(diag H)).
    retries: how many times the Cholesky factorisation was retried with 10× damping.
    error: the paper's loss ½·Σ (w − q)²/U_jj², summed over the layer (for reports); with the
        accumulator's H it estimates the summed squared output error per token.
    """

    weight: torch.Tensor
    mask: torch.Tensor
    damping: float
    retries: int
    error: float


def sparsegpt_solve(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    density: float | None = None,
    pattern: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    transposed: bool = False,
    name: str = "",
    consume: bool = False,
) -> SolveResult:
    """Prune one layer with SparseGPT and update its kept weights to reconstruct its output.

    Args:
        weight: (out, in), or (out, in, kh, kw) flattened to (out, in·kh·kw); any float dtype.
        hessian: (in, in) from `HessianAccumulator`; not modified unless `consume`.
        density: the fraction of weights kept (unstructured). Give this or `pattern`.
        pattern: (N, M): keep N of every M consecutive inputs of each output.
        block_size: columns per lazy-update block (a multiple of M for N:M).
        damp: diagonal damping as a fraction of mean(diag H).
        transposed: the weight is stored (in, out), as transformers' Conv1D.
        name: the layer's name, for error messages.
        consume: the caller has no further use for `hessian`: a float32 one on the weight's
            device is worked on in place, which saves a copy of it (the largest buffer of a wide
            layer's solve).

    Returns:
        SolveResult; computed in float32 on the weight's device, the weight cast back.

    Example:
        >>> result = sparsegpt_solve(layer.weight, acc.hessian, pattern=(2, 4), name="fc1")
        >>> layer.weight.data.copy_(result.weight)
    """
    import torch

    if transposed and weight.dim() != 2:
        raise UsageError(f"`transposed` needs a 2-D weight; {_layer(name)} is {tuple(weight.shape)}")
    w = weight.detach().t() if transposed else weight.detach().reshape(weight.shape[0], -1)  # (out, in)
    rows, cols = w.shape
    _check_arguments(rows, cols, hessian, density, pattern, block_size, damp, name)
    if (density is not None and keep_count(rows * cols, density) == rows * cols) or (
        pattern is not None and pattern[0] == pattern[1]
    ):
        return SolveResult(weight.detach().clone(), torch.ones_like(weight, dtype=torch.bool), damp, 0, 0.0)
    WT = torch.empty((cols, rows), dtype=torch.float32, device=weight.device).copy_(w.t())  # (in, out)
    H = hessian.detach()  # (in, in)
    if not (consume and H.dtype == torch.float32 and H.device == WT.device):
        H = H.to(device=WT.device, dtype=torch.float32, copy=True)
    _symmetrize(H)  # a float32 XᵀX is symmetric only to rounding; read both triangles alike
    if not bool(torch.isfinite(H).all() & torch.isfinite(WT).all()):
        raise ScoreError(f"the weight or Hessian of {_layer(name)} holds NaN or Inf", "check the checkpoint")
    dead = H.diagonal() == 0  # (in,)
    H.diagonal()[dead] = 1.0
    WT[dead] = 0.0
    U, used, retries = _inverse_factor(H, damp, name)
    del H  # the sweep needs only U: a wide layer's peak memory is three (in, in) buffers, not five
    keepT, error = _sweep(WT, U, dead, density, pattern, block_size)  # WT becomes Ŵᵀ, pruned entries 0
    if transposed:  # the stored layout is Ŵᵀ's
        return SolveResult(WT.to(weight.dtype), keepT, used, retries, error)
    out = torch.empty((rows, cols), dtype=weight.dtype, device=WT.device).copy_(WT.t())
    return SolveResult(
        out.reshape(weight.shape), keepT.t().contiguous().reshape(weight.shape), used, retries, error
    )


def _check_arguments(
    rows: int,
    cols: int,
    hessian: torch.Tensor,
    density: float | None,
    pattern: tuple[int, int] | None,
    block_size: int,
    damp: float,
    name: str,
) -> None:
    """Each argument once, with the fix in the message (UsageError, exit 2)."""
    if (density is None) == (pattern is None):
        raise UsageError("give exactly one of `density` and `pattern`", "e.g. density=0.5 or pattern=(2, 4)")
    if density is not None and not 0.0 <= density <= 1.0:
        raise UsageError(f"`density` {density} is outside [0, 1]", option="density", value=density)
    if block_size < 1:
        raise UsageError(
            f"`block_size` {block_size} must be at least 1", option="block_size", value=block_size
        )
    if not (math.isfinite(damp) and damp >= 0):
        raise UsageError(
            f"`damp` {damp} must be a fraction >= 0", "the default is 0.01", option="damp", value=damp
        )
    if tuple(hessian.shape) != (cols, cols):
        raise UsageError(
            f"the Hessian of {_layer(name)} is {tuple(hessian.shape)}; its weight needs ({cols}, {cols})"
        )
    if pattern is not None:
        n, m = pattern
        if not 0 < n <= m:
            raise UsageError(f"`pattern` {n}:{m} needs 0 < N <= M", "write it like (2, 4)", option="pattern")
        if cols % m or block_size % m:
            raise UsageError(
                f"`pattern` {n}:{m} needs the input dimension of {_layer(name)} ({cols}) "
                f"and `block_size` ({block_size}) to be multiples of {m}",
                f"exclude '{name}' or pick a block size that {m} divides",
                option="pattern",
                value=(n, m),
            )


def _symmetrize(H: torch.Tensor, rows: int = 256) -> None:
    """H ← (H + Hᵀ)/2 in place, a band of rows at a time (no second (in, in) buffer).

    Each band reads its rows and columns before writing both; a pair already averaged by an
    earlier band averages to itself exactly, so the result is bit for bit (H + Hᵀ)/2.
    """
    for start in range(0, H.shape[0], rows):
        band = slice(start, start + rows)
        mean = (H[band, :] + H[:, band].t()) / 2  # (rows, in)
        H[band, :] = mean
        H[:, band] = mean.t()


def _inverse_factor(H: torch.Tensor, damp: float, name: str) -> tuple[torch.Tensor, float, int]:
    """U, upper triangular with UᵀU = (H + λI)⁻¹, λ = damp·mean(diag H); retried with 10× damp.

    Reversing the order of the columns turns a lower Cholesky factor into an upper one:
    flip(H) = L Lᵀ gives H = R Rᵀ with R = flip(L) upper, so H⁻¹ = R⁻ᵀ R⁻¹ and U = R⁻¹ (positive
    diagonal, hence the unique Cholesky factor the reference gets from chol(chol_inverse(chol(H)))).
    One factorisation and one triangular inversion (n³/3 multiply-adds in all) instead of two
    factorisations and an inversion (2n³/3).
    """
    import torch

    scale = H.diagonal().mean()
    for retry in range(MAX_RETRIES + 1):
        damped = H.flip(0, 1)
        damped.diagonal().add_(damp * scale)
        L, info = torch.linalg.cholesky_ex(damped)  # (in, in) lower, of the reversed H
        del damped
        if int(info) == 0:
            R = L.flip(0, 1)  # (in, in) upper
            del L
            U = _upper_inverse(R)
            del R
            if bool(torch.isfinite(U).all()):
                return U, damp, retry
        if retry < MAX_RETRIES:
            damp = damp * 10 if damp > 0 else RETRY_DAMP
    raise ScoreError(
        f"the Hessian of {_layer(name)} is not positive definite even with damping {damp:g}·mean(diag H)",
        "use more (or more varied) calibration tokens, or a larger `damp`",
        option="damp",
        value=damp,
    )


def _upper_inverse(R: torch.Tensor, leaf: int = 128) -> torch.Tensor:
    """R⁻¹ for R upper triangular, by halves: [[A, B], [0, C]]⁻¹ = [[A⁻¹, −A⁻¹·B·C⁻¹], [0, C⁻¹]].

    n³/6 multiply-adds, a third of a triangular solve against the identity (n³/2).
    """
    import torch

    n = R.shape[0]
    if n <= leaf:
        return torch.linalg.solve_triangular(R, torch.eye(n, dtype=R.dtype, device=R.device), upper=True)
    h = math.ceil(n / 2 / leaf) * leaf if n > 2 * leaf else n // 2  # split on a multiple of `leaf`
    out = torch.zeros_like(R)
    out[:h, :h] = _upper_inverse(R[:h, :h], leaf)
    out[h:, h:] = _upper_inverse(R[h:, h:], leaf)
    right = torch.linalg.solve_triangular(R[h:, h:], R[:h, h:], upper=True, left=False)  # B·C⁻¹
    out[:h, h:] = -(out[:h, :h] @ right)
    return out


def _sweep(
    WT: torch.Tensor,
    U: torch.Tensor,
    dead: torch.Tensor,
    density: float | None,
    pattern: tuple[int, int] | None,
    block_size: int,
) -> tuple[torch.Tensor, float]:
    """Algorithm 1 in place on Wᵀ (in, out): returns the keep-mask (in, out) and the loss ½·Σ err².

    On Wᵀ column j of W is a contiguous row, and each step is two kernels: err_j = w_j ⊙ p_j
    (p = pruned / U_jj, fixed once the mask is) and the rank-1 update of the block's later columns.
    """
    import torch

    keepT = torch.ones_like(WT, dtype=torch.bool)
    diag = U.diagonal()  # (in,)
    cols, rows = WT.shape
    loss = torch.zeros((), dtype=torch.float64, device=WT.device)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block, errors, P = WT[start:end], torch.empty_like(WT[start:end]), torch.empty_like(WT[start:end])
        if density is not None:
            k = keep_count(rows * end, density) - keep_count(rows * start, density)
            _block_mask(block, diag[start:end], dead[start:end], k, keepT[start:end], P)
        for j in range(end - start):
            if pattern is not None and j % pattern[1] == 0:
                at = slice(start + j, start + j + pattern[1])
                _group_mask(
                    block[j : j + pattern[1]], diag[at], dead[at], pattern, keepT[at], P[j : j + pattern[1]]
                )
            torch.mul(block[j], P[j], out=errors[j])  # err = (w − q)/U_jj, (out,)
            if j + 1 < end - start:
                row = U[start + j, start + j + 1 : end]  # (B−j−1,)
                block[j + 1 :].addmm_(row[:, None], errors[j][None, :], alpha=-1.0)  # rank 1 (BLAS)
        loss += errors.square().sum(dtype=torch.float64) / 2
        if end < cols:
            WT[end:].addmm_(U[start:end, end:].t(), errors, alpha=-1.0)  # lazy batched update
    WT.mul_(keepT)
    return keepT, float(loss)


def _block_mask(
    block: torch.Tensor, diag: torch.Tensor, dead: torch.Tensor, k: int, keep: torch.Tensor, P: torch.Tensor
) -> None:
    """Keep the k highest w²/U_jj² of a (B, out) block, dead inputs pruned first; fills keep and P."""
    from prunecli.scoring.topk import topk_masks

    live = int((~dead).sum()) * block.shape[1]
    scores = (block / diag[:, None]).square().t().contiguous()  # (out, B): row-major flat-index order
    scores.masked_fill_(dead[None, :], -1.0)
    keep.copy_(topk_masks([scores], min(k, live))[0].t())
    _error_factor(~keep, diag, P)


def _group_mask(
    group: torch.Tensor,
    diag: torch.Tensor,
    dead: torch.Tensor,
    pattern: tuple[int, int],
    keep: torch.Tensor,
    P: torch.Tensor,
) -> None:
    """Prune the M−N lowest w²/U_jj² of each output in an (M, out) group, ties to the lower column."""
    import torch

    n, m = pattern
    scores = (group / diag[:, None]).square()  # (M, out), from the already-updated weights
    scores.masked_fill_(dead[:, None], -1.0)
    a, b = scores[:, None, :], scores[None, :, :]  # (M, 1, out) and (1, M, out)
    index = torch.arange(m, device=group.device)
    earlier = (index[None, :] < index[:, None])[:, :, None]  # (M, M, 1): [a, b] = b is left of a
    rank = ((b < a) | ((b == a) & earlier)).sum(1)  # (M, out): how many go before each entry
    pruned = (rank < m - n) | dead[:, None]  # (M, out)
    keep.copy_(~pruned)
    _error_factor(pruned, diag, P)


def _error_factor(pruned: torch.Tensor, diag: torch.Tensor, P: torch.Tensor) -> None:
    """P = pruned / U_jj, (B, out): the factor that turns a column into its error."""
    P.copy_(pruned).div_(diag[:, None])


def _layer(name: str) -> str:
    """The layer as named in messages."""
    return f"layer '{name}'" if name else "the layer"


@dataclass(frozen=True)
class SparseGPTOptions(MethodOptions):
    """`block_size` columns per lazy-update block (128) and `damp`, the Hessian's dampening as a
    fraction of its mean diagonal (0.01): the paper's and the reference code's defaults."""

    block_size: int = 128
    damp: float = 0.01

    def __post_init__(self) -> None:
        check_counts(block_size=self.block_size)
        if not (math.isfinite(self.damp) and self.damp >= 0):
            raise UsageError(f"`damp` {self.damp} must be a finite number >= 0", "the paper uses 0.01",
                             option="damp", value=self.damp)  # fmt: skip


def _block_pruner(options: SparseGPTOptions, rule: object, results: object) -> object:
    """SparseGPT decided layer by layer while calibrating (`prune`; block by block by default)."""
    from prunecli.scoring.layerwise import SparseGPTPruner

    return SparseGPTPruner(rule, results, options.block_size, options.damp)


register_method(
    Method(
        "sparsegpt",
        summary="OBS solve per layer: mask by w²/[H⁻¹]²_jj, kept weights updated (prune only)",
        paper="Frantar & Alistarh 2023 (ICML)",
        needs_model=True,
        data="batches",
        labels="unused",
        returns="weights",
        default_scope="layer",
        options=SparseGPTOptions,
        layerwise=_block_pruner,
    )
)
