"""What an auditor is handed: the provenance report (and, in time, evidence packs)."""
