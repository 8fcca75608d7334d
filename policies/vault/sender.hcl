# keycourier sender: create its own provenance records, pin its ledger's key,
# witness its checkpoints, nothing else.
# Mount: "secret" (KV v2). For another mount, replace the leading "secret/".
#
# Every record is written once (cas=0): this policy grants "create" but never
# "update", so a token cannot add a version to any record (no flooding a
# record's history), and no delete, destroy or metadata write, so it cannot
# remove or shorten one either. A token can create new records; readers act on
# an event only when it is signed by a key they trust (see docs/provenance.md).
# No handed-over or platform credentials.

# One write-once record per event of a bundle:
# keycourier/handovers/<bundle>/events/<ledger>-<seq>-<nonce>
path "secret/data/keycourier/handovers/+/events/*" {
  capabilities = ["create", "read"]
}

# Read-only: the one-record-per-bundle layout of older versions.
path "secret/data/keycourier/handovers/+" {
  capabilities = ["read"]
}

# The version list for idempotent sync and "list" for `audit verify --vault`
# and for reading a bundle's events. No metadata writes (max_versions,
# delete_version_after, custom_metadata).
path "secret/metadata/keycourier/handovers/*" {
  capabilities = ["read", "list"]
}

# Deny events (`policy deny`), one write-once record each; seal/check/open read them.
path "secret/data/keycourier/denied/+/events/*" {
  capabilities = ["create", "read"]
}

path "secret/data/keycourier/denied/+" {
  capabilities = ["read"]
}

path "secret/metadata/keycourier/denied/*" {
  capabilities = ["read", "list"]
}

# Other events without a bundle: write-once.
path "secret/data/keycourier/events/*" {
  capabilities = ["create", "read"]
}

path "secret/metadata/keycourier/events/*" {
  capabilities = ["read", "list"]
}

# The ledger's checkpoint public key, pinned once.
path "secret/data/keycourier/ledgers/*" {
  capabilities = ["create", "read"]
}

# Signed checkpoints of the ledger, each witnessed once, and the ledger this
# machine uses (keycourier/machines/<name>), pinned once.
path "secret/data/keycourier/checkpoints/*" {
  capabilities = ["create", "read"]
}

path "secret/metadata/keycourier/checkpoints/*" {
  capabilities = ["read", "list"]
}

path "secret/data/keycourier/machines/*" {
  capabilities = ["create", "read"]
}

# Optional Transit signing of each record ([vault] transit_key = "keycourier-provenance").
path "transit/sign/keycourier-provenance" {
  capabilities = ["update"]
}
