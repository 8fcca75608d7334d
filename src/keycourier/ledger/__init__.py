"""keycourier.ledger."""
