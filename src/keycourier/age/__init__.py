"""keycourier.age."""
