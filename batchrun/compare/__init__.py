"""Comparing two outputs of a job: the join, its figures and their text."""
