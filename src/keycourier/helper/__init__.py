"""keycourier.helper."""
