"""Events a test model waits on, so a test can hold a request inside a model (same process)."""

import threading

ENTERED = threading.Event()  # set by the model when a request reaches it
RELEASE = threading.Event()  # set by the test to let it finish
