"""Tests that need the shared data set (``../shared/data``) but not TensorFlow."""
