"""Module-level sweep tasks for the tests (importable by worker processes and subprocesses)."""
import os
import time


def square(config, seed):
    """A row from the config and seed: nothing random, so any executor gives the same numbers."""
    return {"value": config["x"] ** 2, "seed_mod": seed % 1000}


def two_rows(config, seed):
    return [{"part": 0, "value": config["x"]}, {"part": 1, "value": -config["x"]}]


def slow(config, seed):
    """Sleeps a little and records which process computed the row (to see what a restart recomputed)."""
    time.sleep(config.get("sleep", 0.05))
    return {"value": config["x"], "pid": os.getpid(), "payload": "x" * config.get("payload", 10)}


def bad_return(config, seed):
    return 3.0


def boom(config, seed):
    if config["x"] == 2:
        raise RuntimeError("task failed on purpose")
    return {"value": config["x"]}
