"""Cluster configuration: Ray cluster launchers, runtime environments, dashboards and the GPU smoke script.

Nothing here is imported by the training code; it describes where that code runs.
"""
