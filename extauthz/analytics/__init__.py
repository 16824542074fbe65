"""Behavioural analytics on the query stream (issue 12): events, detectors, actions, worker."""
