"""The `rada-export` command line: a thin layer over the library (parse, call, report)."""
