"""Files in and out: safetensors, checkpoints, scores files, the manifest, dtypes, safe outputs."""
