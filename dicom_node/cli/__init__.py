"""The ``dicom-node`` command line: ``main`` (every subcommand) and ``classify``."""
