"""keycourier: signed, encrypted, audited handover of partner API credentials."""

__version__ = "0.1.0"
