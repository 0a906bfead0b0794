"""Reading outputs: inspect, compare, signal propagation."""
