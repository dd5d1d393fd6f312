#!/nonexistent/python9
"""Test worker for precogd's black-box tests: its `#!` line names an interpreter that does not
exist, so the file is there and executable but cannot be started."""
