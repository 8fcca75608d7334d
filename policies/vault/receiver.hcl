# keycourier receiver (open / ingest): read handover records, append the
# `opened` and `ingested` events, write partner credentials under
# secret/partners/. It cannot read partner credentials back, delete or
# destroy anything, or change metadata other than custom_metadata.

path "secret/data/keycourier/handovers/*" {
  capabilities = ["create", "update", "read"]
}

path "secret/metadata/keycourier/handovers/*" {
  capabilities = ["read", "create", "update", "list"]
  allowed_parameters = {
    "custom_metadata" = []
  }
}

# Deny records: read (open refuses a denied credential), append (`policy deny`).
path "secret/data/keycourier/denied/*" {
  capabilities = ["create", "update", "read"]
}

path "secret/metadata/keycourier/denied/*" {
  capabilities = ["read", "create", "update", "list"]
  allowed_parameters = {
    "custom_metadata" = []
  }
}

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

# `keycourier ingest --vault-path partners/...`: write the credentials (a new
# version per ingest) and their provenance custom_metadata.
path "secret/data/partners/*" {
  capabilities = ["create", "update"]
}

path "secret/metadata/partners/*" {
  capabilities = ["create", "update"]
  allowed_parameters = {
    "custom_metadata" = []
  }
}

# Optional Transit signing of each record ([vault] transit_key = "keycourier-provenance").
path "transit/sign/keycourier-provenance" {
  capabilities = ["update"]
}
