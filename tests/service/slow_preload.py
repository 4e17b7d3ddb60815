"""A module that takes seconds to import, as torch does on a busy machine: a fork server preloads it in
tests/service/test_fork_server.py (a fixed time, where torch's own import time depends on the machine and its load)."""

import time

IMPORT_S = 3.0
time.sleep(IMPORT_S)
