"""keycourier.partner."""
