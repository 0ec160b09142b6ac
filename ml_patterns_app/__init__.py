"""The application layer of ml-patterns: the ``ml-patterns`` command line, the ``compare`` job and the
parity reports. It may import the core and both backends; nothing below it imports it.
"""
