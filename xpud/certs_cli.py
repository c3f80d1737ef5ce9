"""`xpud certs init` and `xpud certs issue`: the pool's CA and its certificates, made offline in a directory.

Whoever holds the CA directory (ca.key) can make any identity, so keep it off the nodes: issue there, copy each
node its own node-NAME.pem/.key and ca.pem.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
from pathlib import Path

from xpud.proto.identity import AGENT, CONTROLLER, ROLES, name_problem
from xpud.proto.pki import PkiError, init_ca, issue


class CertsError(ValueError):
    """A bad name or a CA directory that cannot be used (exit 2)."""


def add_commands(sub: argparse._SubParsersAction, parser_class: type) -> None:
    certs = sub.add_parser("certs", help="the pool's CA and certificates: certs init --dir D, certs issue --dir D "
                                         "--node N | --user N --role R")
    action = certs.add_subparsers(dest="certs_action", metavar="ACTION", parser_class=parser_class)
    action.required = True
    init = action.add_parser("init", help="make a CA (ca.pem, ca.key) and the controller's certificate")
    init.add_argument("--dir", required=True, metavar="DIR", help="where the CA and certificates are written")
    init.add_argument("--hosts", default="", metavar="H,...",
                      help="more names or addresses agents and clients reach the controller at (localhost, "
                           "127.0.0.1 and this host's name are always in)")
    issue_ = action.add_parser("issue", help="issue a node, user or controller certificate signed by the CA")
    issue_.add_argument("--dir", required=True, metavar="DIR", help="the CA's directory (from certs init)")
    who = issue_.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", metavar="NAME", help="an agent's certificate: role agent, for the node NAME")
    who.add_argument("--user", metavar="NAME", help="a person's or a tool's client certificate (give --role)")
    who.add_argument("--controller", metavar="NAME", help="another controller certificate (give --hosts)")
    issue_.add_argument("--role", choices=list(ROLES), help="what a --user certificate may do")
    issue_.add_argument("--hosts", default="", metavar="H,...",
                        help="names or addresses it serves at (a node: where the router reaches its OIP port)")


def _name(value: str, what: str) -> str:
    if problem := name_problem(value, what):
        raise CertsError(problem)
    return value


def _hosts(text: str) -> list[str]:
    hosts = [h.strip() for h in text.split(",") if h.strip()]
    for host in hosts:
        if not re.fullmatch(r"[A-Za-z0-9.:*-]+", host):
            raise CertsError(f"--hosts entry {host!r} is not a host name or an IP address")
    return hosts


def run(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if args.certs_action == "init":
        hosts = ["localhost", "127.0.0.1", socket.gethostname(), *_hosts(args.hosts)]
        ca = init_ca(directory)
        server = issue(directory, "controller", "controller", CONTROLLER, hosts)
        print(f"CA:         {ca.cert} (key {ca.key}: keep it safe, off the nodes)")
        print(f"controller: {server.cert} (for {', '.join(dict.fromkeys(hosts))})")
        print(f"start it:   xpud controller --tls-ca {ca.cert} --tls-cert {server.cert} --tls-key {server.key}")
        print(f"next:       xpud certs issue --dir {directory} --node NAME  (one per agent)")
        print(f"            xpud certs issue --dir {directory} --user NAME --role {'|'.join(ROLES)}")
        return 0
    hosts = _hosts(args.hosts)
    if args.node:
        name = _name(args.node, "node name")
        stem, role, hosts = f"node-{name}", AGENT, [name, *hosts]
    elif args.controller:
        name = _name(args.controller, "controller name")
        stem, role, hosts = f"controller-{name}", CONTROLLER, [name, "localhost", "127.0.0.1", *hosts]
    else:
        name = _name(args.user, "user name")
        if not args.role:
            raise CertsError(f"a --user certificate needs --role {'|'.join(ROLES)}")
        stem, role = f"user-{name}", args.role
        if hosts:
            raise CertsError("--hosts is for --node and --controller certificates (a user certificate serves nothing)")
    if (directory / f"{stem}.pem").exists():
        raise CertsError(f"{directory / (stem + '.pem')} exists: remove it first to issue it again")
    made = issue(directory, stem, name, role, hosts or None)
    print(f"{role} certificate for {name}: {made.cert} (key {made.key})")
    ca_pem = directory / "ca.pem"
    if role == AGENT:
        print(f"use it:     xpud agent --node {name} --controller HOST:PORT --tls-ca {ca_pem} --tls-cert {made.cert} "
              f"--tls-key {made.key}")
    elif role in ROLES:
        print(f"use it:     xpud nodes --tls-ca {ca_pem} --tls-cert {made.cert} --tls-key {made.key}  "
              "(or XPUD_TLS_CA, XPUD_TLS_CERT, XPUD_TLS_KEY)")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except (CertsError, PkiError) as exc:
        sys.stderr.write(f"xpud certs {args.certs_action}: error: {exc}\n")
        return 2
