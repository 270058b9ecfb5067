"""The command line: one module per command (`raycifar train|tune|evaluate|predict|report|
compare|bench|doctor`, dispatched by `main.py`), each parsing its flags into the typed configs,
checking what it can on the driver and calling down; `args.py` holds what they share (a flag
per `TrainConfig` field, and `run_cli`: one `error:` line and exit 2 for a user's mistake).
The top layer: it may import every other, and nothing imports it.
"""
