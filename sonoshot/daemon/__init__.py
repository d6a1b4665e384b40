"""The running service: stages, carriers, periodic jobs, health and metrics."""

#: What one ``sonoshot serve`` process can run (see :mod:`sonoshot.daemon.service`).
ROLES = ("all", "receiver", "worker", "deliverer")
