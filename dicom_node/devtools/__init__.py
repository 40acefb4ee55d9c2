"""Helpers for the demo, tests and benchmarks: run Orthanc and the node as local processes.

Not used by the node at run time.
"""
