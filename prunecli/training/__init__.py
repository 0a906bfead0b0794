"""Training with masks: attach_masks keeps pruned weights at zero."""
