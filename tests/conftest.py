import logging
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)
logging.getLogger("flwr").setLevel(logging.WARNING)
torch.set_num_threads(1)


@pytest.fixture
def tiny_overrides():
    """A federation small enough for a unit test (a couple of seconds inline)."""
    return ["server.rounds=2", "data.num_clients=4", "client.epochs=1", 'run.engine="inline"']
