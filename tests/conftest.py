"""Session-wide setup for every test.

Ctrl-C: flexgc's master and workers keep an inherited SIG_IGN for SIGINT (the Unix convention for background
processes; a local cluster starts its children that way and stops them with SIGTERM). A runner that started
pytest with SIGINT ignored would hand that on to every process a test starts, and the tests that send SIGINT
to `flexgc master` or `flexgc bench` need it handled as in a terminal: give this process Python's handler,
so the children start with the default disposition.
"""

from __future__ import annotations

import signal

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
