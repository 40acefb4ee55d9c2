"""Training, evaluation and model cards for the models shipped under ``models/``."""
