"""The tests' SMTP server's handler (aiosmtpd, run in its own process by tests/integration/conftest.py):
aiosmtpd's Maildir handler that also says which connection brought each mail, and refuses for now the
recipients listed in a file next to the Maildir, as a server that is failing would."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from aiosmtpd.handlers import Mailbox

# The header naming the connection (numbered from 1 in the server's life) that brought the mail.
CONNECTION_HEADER = "X-Sink-Connection"
REFUSED_FILE = "refused"


class CountingMailbox(Mailbox):
    def __init__(self, mail_dir: Any, message_class: Any = None) -> None:
        super().__init__(mail_dir, message_class)
        self.refused_file = Path(mail_dir).parent / REFUSED_FILE
        self.connections = itertools.count(1)

    def prepare_message(self, session: Any, envelope: Any) -> Any:
        message = super().prepare_message(session, envelope)
        # aiosmtpd makes one session per connection.
        number = getattr(session, "sink_connection", None)
        if number is None:
            number = session.sink_connection = next(self.connections)
        message[CONNECTION_HEADER] = str(number)
        return message

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        refused = self.refused_file.read_text().split() if self.refused_file.exists() else []
        if address in refused:
            return "451 4.3.0 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"
