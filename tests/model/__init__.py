"""Tests that need TensorFlow and the shipped models (most also use the shared data set)."""
