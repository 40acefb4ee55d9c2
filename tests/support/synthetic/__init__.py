"""Synthetic chest CT phantoms with known ground truth, for tests, benchmarks and demos.

``make_phantom`` describes a phantom (body, two lungs, airway, vessels, ground-glass and
consolidation balls, some against the pleura) and renders it slice by slice;
``write_phantom_series`` writes it as a DICOM CT series and returns the truth measured on the
rendered voxels.  Nothing here is patient data.
"""

from tests.support.synthetic.phantom import (
    Ball,
    LungTruth,
    Phantom,
    PhantomTruth,
    Tube,
    make_phantom,
)
from tests.support.synthetic.writer import PhantomSeries, write_phantom_series

__all__ = [
    "Ball",
    "LungTruth",
    "Phantom",
    "PhantomSeries",
    "PhantomTruth",
    "Tube",
    "make_phantom",
    "write_phantom_series",
]
