"""alignd's shared core: settings, database, artifact store, Celery wiring, errors. No torch."""
