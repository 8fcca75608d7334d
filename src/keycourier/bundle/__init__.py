"""keycourier.bundle."""
