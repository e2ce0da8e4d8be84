"""The query API's core (issue 13 §1): what can be asked, where it is read, how it is compiled.

* ``catalog``: the measures and dimensions ``/v1/query`` accepts (``/v1/catalog``).
* ``timegrid``: steps, grains, ranges and periods (aligned, bounded).
* ``sources``: the coarsest stored source that answers a query exactly.
* ``compiler``: a validated query to parameterised SQL over the ``analyst`` views.
* ``cursor``: opaque keyset cursors for large results.
* ``answers``: the response bodies, one async function per route, read on a scoped
  analyst session (``linkpulse.api.analyst_db``).

The cache (``cache``, ``watermarks``) and the slow-query log (``slowlog``) live here too.
"""
