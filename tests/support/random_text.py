"""The alphabet for made-up credentials in tests.

Letters and digits without vowels and without x: a random client ID or secret drawn from it
can never contain a word of the placeholder rule ("todo", "xxxx", "secret", ...), which
would otherwise reject about one made-up credential in a few thousand and make a test fail
at random. Fifty characters still give a 40-character secret over 220 bits.
"""

from __future__ import annotations

import string

ALNUM = "".join(c for c in string.ascii_letters + string.digits if c.lower() not in "aeioux")
