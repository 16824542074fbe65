"""The red-team harness (`make redteam`): real third-party attacks through Envoy, measured.

`run.py` (project venv) starts a stack, creates the callers' keys and runs each attack in
`.venv-redteam` (`attacks.py`: IBM ART, numpy, scikit-learn); `client.py` is the paced caller
every attack and benign client uses (stdlib only); `report.py` writes the report and its plot.
"""
