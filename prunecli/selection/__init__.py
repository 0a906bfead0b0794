"""Scores to masks: exact top-k, thresholds, N:M, rows, structures, the prunable set, worker threads."""
