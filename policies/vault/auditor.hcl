# keycourier auditor: read every provenance record and its metadata, and the
# metadata (provenance custom_metadata, version history) of partner
# credentials, but never the partner secret data itself. Read-only.

path "secret/data/keycourier/*" {
  capabilities = ["read"]
}

path "secret/metadata/keycourier/*" {
  capabilities = ["read", "list"]
}

path "secret/metadata/partners/*" {
  capabilities = ["read", "list"]
}

# Optional: check the Transit signatures of records.
path "transit/verify/keycourier-provenance" {
  capabilities = ["update"]
}
