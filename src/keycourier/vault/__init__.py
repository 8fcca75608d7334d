"""The one Vault/OpenBao adapter. Import names from its modules; this file imports nothing.

- ``keycourier.vault.errors``: how every hvac, requests, ``ssl`` and ``http.client``
  failure becomes a keycourier error (``translate``, ``status_error``, ``call``), with
  ``NotFoundError`` and ``CasMismatchError``.
- ``keycourier.vault.client``: log-in (token, AppRole, JWT) to an hvac client
  (``connect``), ``ping``, ``token_of``; the address check and the token's sources.
- ``keycourier.vault.paths``: which KV paths are valid (``check_path``) and where
  ``ingest`` may store handed-over credentials (``check_ingest_path``).
- ``keycourier.vault.kv``: KV v2 over hvac (``kv_read``, ``kv_read_version``,
  ``kv_write``, ``kv_read_metadata``, ``kv_list``, ``kv_write_custom_metadata``),
  ``KvVersion``, ``KvMetadata`` and ``VaultKv`` (ingest's ``handover.KvStore``).
- ``keycourier.vault.fastkv``: ``FastKV``, KV v2 over a keep-alive ``http.client``
  connection for the hot paths (the ledger mirror's writes, ``kv_read_direct``).
- ``keycourier.vault.doctor``: ``keycourier doctor``, the check that Vault is reachable,
  unsealed, has a KV v2 mount and an audit device, and that the token can do what a role
  needs.
- ``keycourier.vault.token_lookup``: ``lookup_self``, the token helper's question to
  Vault about a client's Vault token (``auth/token/lookup-self``, over the helper's
  aiohttp session); the helper keeps the cache and the rate limit.

hvac is imported inside the functions that need it (about 150 ms), only ``fastkv``
imports ``http.client`` and ``ssl``, and only ``token_lookup`` imports aiohttp: importing
``keycourier.vault.paths`` or ``keycourier.vault.errors`` costs those modules and nothing
else, which is why this file re-exports nothing.

Every failure leaves the package as a keycourier error:
:class:`~keycourier.errors.AuthError` (exit 5) for 401/403 and log-in failures,
:class:`~keycourier.errors.UnavailableError` (exit 6) for connection errors, timeouts,
5xx, sealed or uninitialised servers, 429; :class:`~keycourier.errors.ConfigError`
(exit 3) for bad addresses, TLS trust problems, missing token/secret-ID files;
``CasMismatchError`` (an ``IntegrityError``) for a check-and-set refusal. Messages never
hold a token, a secret ID, a JWT or secret data.
"""
