"""The `d3pm` command line: thin entry points over the library."""
