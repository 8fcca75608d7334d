# keycourier token helper: read the platform API credentials that token
# generation needs (secret/platform/<partner>/<platform>), nothing else.
# Handed-over credentials (secret/handed-over/, written by `ingest`) are not
# readable. No list, no metadata, no provenance records, no writes.

path "secret/data/platform/*" {
  capabilities = ["read"]
}
