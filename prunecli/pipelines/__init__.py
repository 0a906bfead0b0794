"""What the commands call: score, apply and the demo, each one call from Python."""
