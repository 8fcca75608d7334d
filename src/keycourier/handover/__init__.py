"""The handover workflows as a library; import names from the module that holds them.

- ``keycourier.handover.checking``: ``check``, the policy run on a credential without
  sealing or recording anything (``keycourier check``).
- ``keycourier.handover.sealing``: ``seal`` (``keycourier seal`` and ``rotate``), with
  ``RejectedError``, ``rotation_source`` and ``check_bundle_id``.
- ``keycourier.handover.opening``: ``open_bundle`` (``keycourier open``), the bundle-state
  checks and the ``DecidingRecorder``.
- ``keycourier.handover.ingesting``: ``ingest`` (``keycourier ingest``) through a
  ``KvStore`` (``vault.kv.VaultKv``), with the occupancy and rotation rules for a path.
- ``keycourier.handover.revoking``: ``revoke`` (``keycourier revoke``).
- ``keycourier.handover.denying``: ``deny`` (``keycourier policy deny``).

Each workflow takes typed inputs (the facts, the identity, the pinned senders, the policy,
a recorder, a clock) and returns a typed result with its warnings and the events it
recorded. It never prints and never exits: errors are ``keycourier.errors`` classes with
their exit codes. The command line (``keycourier.cli``) parses options, calls one of these
and renders the result; ``keycourier.api`` re-exports what a script uses (docs/api.md).
This file imports nothing, so a command pays only for the workflow it runs.
"""
