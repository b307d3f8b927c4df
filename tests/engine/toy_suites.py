"""Suite dictionaries over the fake plugins, shared by the engine tests."""


def toy_suite(**overrides) -> dict:
    """A suite over the fake plugins; keyword arguments replace top-level keys."""
    suite = {
        "name": "toy",
        "description": "engine test suite",
        "seeds": [0],
        "device": "cpu",
        "models": [{"plugin": "toy-ae", "budget": {"steps": 12, "checkpoint_every": 5}}],
        "datasets": [{"plugin": "toy", "root": "embedded"}],
        "metrics": ["toy-mae", "mean-gap"],
        "evaluation": {"batch_size": 4, "grid_size": 4, "n_samples": 6},
    }
    suite.update(overrides)
    return suite
