"""Optional features built on the run's life cycle hooks (:mod:`pytest_taskctl.hookspecs`):
resume, live pauses and concurrent groups. Each is imported only when a run uses it."""
