# keycourier token helper: read the partner credentials that token
# generation needs (secret/partners/<partner>/<platform>), nothing else.
# No list, no metadata, no provenance records, no writes.

path "secret/data/partners/*" {
  capabilities = ["read"]
}
