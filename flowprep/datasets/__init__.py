"""Datasets: pipeline files, official split lists, and the built-in synthetic dataset."""
