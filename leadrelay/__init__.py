"""leadrelay: the composition root (command line, ``leadrelay dev``) of the lead-intake pipeline, and
the foundation every package reads (``settings``, ``logging``), which imports only the masks of ``rules.contact``.

The domain lives in the top-level packages ``intake`` (edges), ``workers`` (Celery app and tasks),
``models`` (tables, repositories, unit of work) and ``rules`` (pure decisions), each above the next.
"""
