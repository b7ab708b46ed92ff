"""The registry of works: the service every entry point calls (:mod:`registry.service`)
and the one composition root that builds what they share (:mod:`registry.root`)."""
