"""An example user project for hpctrain: its own model (byo_example.model) and its own loop (train.py)."""
