"""The LLM quality study: prunecli's magnitude, Wanda and SparseGPT against llm-compressor's.

One command, resumable; run from the repository root with the project's venv:

    nice -n 5 .venv/bin/python -m benchmarks.llm                  # everything, then the report
    .venv/bin/python -m benchmarks.llm --only-report               # docs/results-llm.md and .png
    .venv/bin/python -m benchmarks.llm --only sparsegpt            # runs whose name contains this
    .venv/bin/python -m benchmarks.llm --work /tmp/llm --steps 50  # elsewhere, a shorter training
    .venv/bin/python -m benchmarks.llm --quick --only prunecli     # harness check on a toy model

What it does, each step cached under --work (default benchmarks/_work/llm, git-ignored):

1. Corpus (`data.py`): the CPython documentation in the standard library
   (`pydoc_data.topics.topics`), split by topic into train / calibration / held-out, ≈10% of the
   characters each to the last two (topics in SHA-256 order of their key; no topic is split).
2. Tokenizer: byte-level BPE (4,096 tokens) trained on the train part with `tokenizers`, saved
   as a `PreTrainedTokenizerFast` with `<s>`, `</s>` and `<unk>`.
3. Model (`model.py`, `prepare.py`): a 17.8M-parameter Llama (hidden 512, 4 layers, 8 heads, MLP
   1536, untied head; 13.6M of the parameters in the decoder Linear weights that are pruned)
   trained on CPU with AdamW, warmup and cosine (`--steps`, default 280, of 8 × 128 tokens,
   lr 3e-3), seeded, two threads; saved with `save_pretrained` (float32, 20 MB shards) and the
   tokenizer into WORK/model-KEY, whose train.json marks it complete (then it is never retrained).
   Why this size: the whole study has to fit in about 70 minutes on a shared 2-core machine.
   A 6-layer, 23.5M model at lr 1e-3 managed only 300 steps in that budget and stayed close to
   its initialisation (held-out perplexity 75, magnitude pruning at 50% cost almost nothing), so
   the methods could not be told apart. Four layers (a step costs ~60% of six) and a 3× higher
   learning rate buy a model that has moved far from its initialisation in the same time. On a
   machine whose two cores were shared with other jobs (load average 3-10), the first full run took
   86 min, 37 of them training: over the 70-minute target, with training and pruning slowed alike.
4. Calibration: 128 windows × 128 tokens from the calibration part at seeded offsets, one
   `input_ids` npz (WORK/calib-KEY.npz) given to both tools.
5. Runs (`runs.py`): prunecli `prune` with magnitude (`--scope layer`), Wanda (`--scope row`)
   and SparseGPT, one-shot (`--no-sequential`) and block by block (`--sequential`), and
   `benchmarks/llmc_wanda.py` (llm-compressor's Wanda and SparseGPT, in its own venv: set
   LLMC_PYTHON, default /work/llmc-venv/bin/python), at 50/60/70% unstructured and 2:4 / 4:8;
   the comparisons first, prunecli's one-shot SparseGPT (nothing to compare it with) last.
   Each run is a subprocess, timed by a bare launcher (wall, peak RSS from wait4), with the same
   OMP_NUM_THREADS (`--threads`) for both tools; its output model is then checked (zeros in the
   decoder Linear weights, N:M compliance) and evaluated (held-out perplexity over
   non-overlapping 128-token windows, the same transformers code for all).
   WORK/runs/NAME-HASH/result.json caches it; a failed run records its stderr, a run the tool
   cannot do yet (a method or flag it lacks) is recorded as pending, and both are tried again
   on the next invocation.
   Diagnostic runs come last: magnitude ranked per row and Wanda per tensor (`--scope` swapped),
   to tell whether the ranking scope decides the papers' ordering.
6. Mask agreement (`agreement.py`): each prunecli Wanda / SparseGPT run against llm-compressor's
   at the same setting, from the saved weights (fraction of identical mask entries, IoU of the
   kept weights), cached in WORK/agreement/.
7. Report (`report.py` for the tables and plot, `findings.py` for the analyses, `lookup.py` to
   read the cache): reads only the cache and writes docs/results-llm.md and docs/results-llm.png.
   study.json lists every invocation with its wall time.
"""
