"""Helpers shared by the labs of *Deep Learning in the Cloud*.

The labs keep the ideas students must learn; this package keeps the plumbing
(finding the data, Java, Docker, free ports, compiling protos, timing) so that
every lab runs on its own, on Binder, a JupyterHub or a laptop.
"""

__version__ = "0.1.0"
