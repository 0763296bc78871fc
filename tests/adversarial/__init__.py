"""Hostile results and bad inputs (issue #13): names that try to leave their folder, empty
data, rows that do not fit the schema, torn lines, out-of-range numbers, and fuzzers."""
