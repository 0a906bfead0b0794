"""What the commands call, each one call from Python: `score.score`, `apply.apply`,
`prune.prune` (score and apply, the scores held in memory) and the demo's training."""
