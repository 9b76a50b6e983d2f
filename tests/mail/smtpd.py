"""A real SMTP submission server for the integration tests (aiosmtpd), started
by the harness in tests/src/mail.rs: STARTTLS and implicit TLS (SMTPS), AUTH
PLAIN/LOGIN required (also allowed without TLS, for tests), and delivery of
every accepted message into Dovecot over LMTP.

Recipients by local part (any domain):
  refused          550 5.1.1 mailbox unavailable
  tempfail<N>      451 4.3.0 try again later to the first N RCPT attempts for
                   that address (counted across connections), then accepted
  always451        451 4.3.0 try again later, always
  alice, bob       delivered to that Dovecot user
  anything else    delivered to alice

State written to --state (the harness reads it):
  rcpt.log         one line per RCPT TO attempt: the address, lower case
  received.jsonl   one JSON line per accepted message (envelope, AUTH user,
                   the file holding its raw bytes)
  received/N.eml   the raw message as the client sent it
"""

import argparse
import asyncio
import json
import logging
import os
import re
import smtplib
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

USERS_IN_DOVECOT = ("alice", "bob")
TEMPFAIL = re.compile(r"^tempfail(\d+)$")


def read_users(path):
    """user:{PLAIN}password lines (Dovecot's passwd-file)."""
    users = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if len(fields) >= 2 and fields[1].startswith("{PLAIN}"):
                users[fields[0]] = fields[1][len("{PLAIN}") :]
    return users


class Handler:
    def __init__(self, args):
        self.args = args
        self.users = read_users(args.passwd)
        self.attempts = {}
        self.received = 0
        os.makedirs(os.path.join(args.state, "received"), exist_ok=True)

    def log(self, text):
        print(text, file=sys.stderr, flush=True)

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            if login in self.users and self.users[login] == password:
                self.log(f"AUTH {mechanism} {login}: ok")
                return AuthResult(success=True, auth_data=login)
            self.log(f"AUTH {mechanism} {login}: invalid")
        return AuthResult(success=False, handled=False)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        key = address.lower()
        with open(os.path.join(self.args.state, "rcpt.log"), "a", encoding="utf-8") as f:
            f.write(key + "\n")
        n = self.attempts.get(key, 0) + 1
        self.attempts[key] = n
        local = key.rsplit("@", 1)[0]
        tempfail = TEMPFAIL.match(local)
        if local == "refused":
            status = "550 5.1.1 mailbox unavailable"
        elif local == "always451" or (tempfail and n <= int(tempfail.group(1))):
            status = "451 4.3.0 try again later"
        else:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
            status = "250 2.1.5 OK"
        self.log(f"RCPT {address} (attempt {n}): {status}")
        return status

    def deliver(self, mail_from, users, content):
        """LMTP into Dovecot, one transaction per user (LMTP answers DATA once
        per recipient, which smtplib reads as one reply); the users refused."""
        sender = mail_from if mail_from.isascii() else ""
        refused = {}
        with smtplib.LMTP("127.0.0.1", self.args.lmtp_port, timeout=30) as lmtp:
            for u in users:
                refused.update(lmtp.sendmail(sender, [f"{u}@localhost"], content))
        return refused

    async def handle_DATA(self, server, session, envelope):
        users = []
        for rcpt in envelope.rcpt_tos:
            local = rcpt.lower().rsplit("@", 1)[0]
            user = local if local in USERS_IN_DOVECOT else "alice"
            if user not in users:
                users.append(user)
        content = envelope.original_content or b""
        loop = asyncio.get_running_loop()
        try:
            refused = await loop.run_in_executor(
                None, self.deliver, envelope.mail_from or "", users, content
            )
        except Exception as e:  # delivery failed: the client may retry
            self.log(f"LMTP delivery to {users} failed: {e!r}")
            return "451 4.3.0 local delivery failed"
        if refused:
            self.log(f"LMTP refused {refused}")
        self.received += 1
        name = f"{self.received:06}.eml"
        with open(os.path.join(self.args.state, "received", name), "wb") as f:
            f.write(content)
        record = {
            "file": name,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "auth": session.auth_data if isinstance(session.auth_data, str) else None,
            "delivered_to": users,
        }
        with open(os.path.join(self.args.state, "received.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.log(f"DATA from {envelope.mail_from} to {envelope.rcpt_tos}: delivered to {users}")
        return "250 2.0.0 OK: queued as " + name


class Quiet(logging.Filter):
    """Drops aiosmtpd's per-connection warnings about settings made on purpose."""

    def filter(self, record):
        text = str(record.msg)
        return "auth_require_tls" not in text and "login_data is deprecated" not in text


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--smtp-port", type=int, required=True)
    p.add_argument("--smtps-port", type=int, required=True)
    p.add_argument("--lmtp-port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--passwd", required=True)
    p.add_argument("--state", required=True)
    args = p.parse_args()

    # Plain-text AUTH is allowed on purpose (tests); say so once, not per connection.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("mail.log").addFilter(Quiet())

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    handler = Handler(args)
    loop = asyncio.get_running_loop()

    def smtp(starttls):
        return SMTP(
            handler,
            hostname="localhost",
            tls_context=tls if starttls else None,
            require_starttls=False,
            auth_required=True,
            auth_require_tls=False,
            authenticator=handler.authenticate,
            enable_SMTPUTF8=True,
            loop=loop,
        )

    servers = [
        await loop.create_server(lambda: smtp(True), "127.0.0.1", args.smtp_port),
        await loop.create_server(lambda: smtp(False), "127.0.0.1", args.smtps_port, ssl=tls),
    ]
    print(f"smtpd ready: smtp {args.smtp_port}, smtps {args.smtps_port}", file=sys.stderr, flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
