"""Intake role: receiving instances and filing them durably.

``admission`` (the gate in front of the DICOM port: deadlines, slots, AE + host binding),
``scp`` (the pynetdicom AE and its handlers), ``filing`` (the C-STORE contract: checks, atomic
write, one job-log row per instance), ``stow_server`` (STOW-RS through the same filing),
``codestream`` and ``inflate`` (what a data set will cost to decode or inflate, checked first;
the worker uses them too).
"""
