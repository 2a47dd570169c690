"""The ``flowprep`` command line (click): parses arguments and calls the library."""
