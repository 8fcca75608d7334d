"""Transparency-log primitives: RFC 6962 Merkle trees, C2SP signed notes and checkpoints.

Pure code (hashlib and PyNaCl): the ledger stores the tree, this package computes
and checks it. See docs/audit.md for the formats.
"""
