"""leadrelay: the composition root (settings, logging, command line) of the lead-intake pipeline.

The domain lives in the top-level packages ``intake`` (edges), ``rules`` (pure decisions),
``models`` (tables, repositories, unit of work) and ``workers`` (Celery app and tasks).
"""
