"""Test setup: eight fake CPU devices, so every sharding path runs on CPU.

The flag must be set before JAX initialises its backends, which is why it is
set here at import time rather than in a fixture.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
