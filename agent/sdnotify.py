"""systemd's sd_notify protocol (Type=notify, watchdog): one datagram to $NOTIFY_SOCKET.

Does nothing when the agent does not run under systemd.
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self._address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # ping at half the timeout, as sd_watchdog_enabled(3) advises
        self.watchdog_interval: float | None = int(usec) / 2e6 if watchdog else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *states: str) -> bool:
        """Send e.g. notify("READY=1", "STATUS=serving"); False when not under systemd or on error."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(states).encode(), self._address)
        except OSError:
            return False
        return True
