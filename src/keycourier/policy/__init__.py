"""keycourier.policy."""
