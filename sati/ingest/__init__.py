"""The offline import toolkit: read other tools' dataset files, check them, tokenize once, write one
SATI dataset file (``sati data prepare``), and report what a file holds (``sati data inspect``).

It imports ``sati.data`` (the file format); nothing on the training path imports it.
"""
