"""The HM3 search: preferences, the bilevel merge + path search, the front (see :mod:`hm3.search.run`)."""
