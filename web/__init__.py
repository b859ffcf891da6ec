"""dff-web: the search page (issue 11)."""
