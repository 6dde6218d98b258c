"""The operator side: the /api/* routes, probes, metrics and the live page."""
