"""codelm: build code language models end to end, from a directory of code to a model that completes it."""

__version__ = "0.1.0"
