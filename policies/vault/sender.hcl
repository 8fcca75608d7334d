# keycourier sender: create and append handover (and deny) records, pin its
# ledger's key, nothing else.
# Mount: "secret" (KV v2). For another mount, replace the leading "secret/".
# No delete, no destroy, no metadata changes other than custom_metadata, no
# partner credentials. History cannot be rewritten: KV v2 versions are
# immutable and this policy grants no delete/destroy/metadata-delete.

# One record per bundle: created with cas=0, then appended with cas=current.
path "secret/data/keycourier/handovers/*" {
  capabilities = ["create", "update", "read"]
}

# custom_metadata (bundle ID, platform, partner, fingerprint) and reading the
# version list for idempotent sync. Only custom_metadata may be set, so the
# sender cannot shrink max_versions or set delete_version_after.
# "list" lets `audit verify --vault` find every record this ledger wrote
# (a removed local tail shows up as records Vault has and the ledger lacks).
path "secret/metadata/keycourier/handovers/*" {
  capabilities = ["read", "create", "update", "list"]
  allowed_parameters = {
    "custom_metadata" = []
  }
}

# One deny record per credential fingerprint (`policy deny`), appended like a
# bundle record; seal/check/open read it to honour a deny from any ledger.
path "secret/data/keycourier/denied/*" {
  capabilities = ["create", "update", "read"]
}

path "secret/metadata/keycourier/denied/*" {
  capabilities = ["read", "create", "update", "list"]
  allowed_parameters = {
    "custom_metadata" = []
  }
}

# Other events without a bundle: write-once (create only, never update).
path "secret/data/keycourier/events/*" {
  capabilities = ["create", "read"]
}

path "secret/metadata/keycourier/events/*" {
  capabilities = ["read", "list"]
}

# The ledger's checkpoint public key, pinned once (cas=0, create only).
path "secret/data/keycourier/ledgers/*" {
  capabilities = ["create", "read"]
}

# Optional Transit signing of each record ([vault] transit_key = "keycourier-provenance").
path "transit/sign/keycourier-provenance" {
  capabilities = ["update"]
}
