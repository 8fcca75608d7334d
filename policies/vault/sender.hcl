# keycourier sender: create and append handover records, nothing else.
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
path "secret/metadata/keycourier/handovers/*" {
  capabilities = ["read", "create", "update"]
  allowed_parameters = {
    "custom_metadata" = []
  }
}

# Events without a bundle: write-once (create only, never update).
path "secret/data/keycourier/events/*" {
  capabilities = ["create", "read"]
}

path "secret/metadata/keycourier/events/*" {
  capabilities = ["read"]
}

# Optional Transit signing of each record ([vault] transit_key = "keycourier-provenance").
path "transit/sign/keycourier-provenance" {
  capabilities = ["update"]
}
