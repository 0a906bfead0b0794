"""The streaming pass of apply: selection keys, the mask plan, masked writing, isometry."""
