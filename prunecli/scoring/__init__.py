"""Saliency methods: a registry and one module per method (pure tensor functions)."""

from prunecli.scoring.registry import Method, all_methods, get_method, register, register_method

__all__ = ["Method", "all_methods", "get_method", "register", "register_method"]
