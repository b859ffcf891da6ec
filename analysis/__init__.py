"""dff-analyze: look inside the network (issue 12)."""
