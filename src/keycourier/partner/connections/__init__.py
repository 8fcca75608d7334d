"""Accounting connections on the platform, in the Monite and the Tesouro dialects.

After the partner's QuickBooks/Xero keys are handed over, the platform's setup
guide has the partner create one accounting connection per entity (Monite) or
organization (Tesouro), give the returned ``connection_url`` to the entity's
user, and wait until the connection's ``status`` is ``connected`` with its
``platform`` set. Facts: ``docs/platform-apis.md`` sections 1.2, 1.3 and 1.5.

Three modules, from the inside out; each imports only the ones before it, and
callers import a name from the module that holds it:

* ``model``: the endpoint (dialects, base URL, version) and the connection,
  with one strict, size-limited parser per thing the platform sends (a
  connection object, a list reply, an error body). After parsing, values are
  trusted: IDs are canonical UUIDs, URLs are http(s) without control
  characters, every text is printable and bounded.
* ``client``: ``ConnectionClient``, the HTTP calls, with the bearer token taken
  from a ``TokenSource`` seam (a 401 invalidates it and retries exactly once),
  ``Retry-After`` honoured on 429, an optional ``Deadline``, and every failure
  turned into a ``keycourier.errors`` subclass whose message is safe to show.
* ``workflow``: ``create_connection`` / ``wait_for_connection`` /
  ``disconnect_connection``, the partner's workflow (one active connection per
  entity, ``--replace``, polling with backoff), each state change handed to a
  ``Recorder``.

Nothing here prints or imports click or aiohttp. HTTP goes through the stdlib
(``urllib``), imported only when a request is sent.
"""
