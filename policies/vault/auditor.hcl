# keycourier auditor: read every provenance record, witnessed checkpoint and
# their metadata, and the metadata (provenance custom_metadata, version
# history) of handed-over credentials, but never the credentials themselves.
# Read-only.

path "secret/data/keycourier/*" {
  capabilities = ["read"]
}

path "secret/metadata/keycourier/*" {
  capabilities = ["read", "list"]
}

path "secret/metadata/handed-over/*" {
  capabilities = ["read", "list"]
}

# Optional: check the Transit signatures of records.
path "transit/verify/keycourier-provenance" {
  capabilities = ["update"]
}
