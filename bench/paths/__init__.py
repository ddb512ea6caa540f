"""The request paths users call through one Turnout gateway, side by side (``make bench-paths``).

A package only so that its modules (``run``, ...) are named apart from ``bench/overhead``'s for mypy; every
file runs as a script (``python bench/paths/run.py``), importing its siblings as ``paths.*`` and
``bench/overhead``'s modules by their own names.
"""
