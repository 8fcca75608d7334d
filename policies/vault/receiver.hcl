# keycourier receiver (open / ingest): create its own provenance records
# (`opened`, `ingested`) exactly like the sender role, and write handed-over
# credentials under secret/handed-over/. It cannot read credentials back,
# delete or destroy anything, or change metadata other than custom_metadata
# of handed-over credentials.
# Mount: "secret" (KV v2). For another mount, replace the leading "secret/".

path "secret/data/keycourier/handovers/+/events/*" {
  capabilities = ["create", "read"]
}

path "secret/data/keycourier/handovers/+" {
  capabilities = ["read"]
}

path "secret/metadata/keycourier/handovers/*" {
  capabilities = ["read", "list"]
}

# Deny events: read (open refuses a denied credential), create (`policy deny`).
path "secret/data/keycourier/denied/+/events/*" {
  capabilities = ["create", "read"]
}

path "secret/data/keycourier/denied/+" {
  capabilities = ["read"]
}

path "secret/metadata/keycourier/denied/*" {
  capabilities = ["read", "list"]
}

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

# Signed checkpoints, each witnessed once; the ledger this machine uses.
path "secret/data/keycourier/checkpoints/*" {
  capabilities = ["create", "read"]
}

path "secret/metadata/keycourier/checkpoints/*" {
  capabilities = ["read", "list"]
}

path "secret/data/keycourier/machines/*" {
  capabilities = ["create", "read"]
}

# `keycourier ingest --vault-path handed-over/...`: write the credentials (a new
# version per ingest, with check-and-set, so cas_required = true works) and
# their provenance custom_metadata; read the version list (metadata only, never
# the data) for the check-and-set. No other role can read secret/data/handed-over/.
path "secret/data/handed-over/*" {
  capabilities = ["create", "update"]
}

path "secret/metadata/handed-over/*" {
  capabilities = ["read", "create", "update"]
  allowed_parameters = {
    "custom_metadata" = []
  }
}

# Optional Transit signing of each record ([vault] transit_key = "keycourier-provenance").
path "transit/sign/keycourier-provenance" {
  capabilities = ["update"]
}
