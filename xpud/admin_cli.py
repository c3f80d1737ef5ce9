"""The admin commands: `xpud nodes`, `pool`, `models`, `deploy`, `apply`, `deployments`, `traffic`, `rollout`,
`rollback`, `undeploy`, `events`, `drain`, `uncordon`, `tokens` — a thin client of the controller's xpud.v1.Admin
API."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import grpc

from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc
from xpud.proto.credentials import CredentialsError, TlsFiles, channel_credentials
from xpud.proto.identity import ROLES
from xpud.render import NA, message_dict, table
from xpud.validate import SIZE_HELP, ValidationError, deployment, unknown_keys
from xpud.validate import parse_size as _parse_size

DEFAULT_CONTROLLER = "127.0.0.1:7070"
DEPLOY_FLAGS = ("replicas", "device", "memory", "priority", "zone", "max_batch", "strategy", "max_inflight",
                "max_unavailable")
# `deploy`'s defaults (argparse's are None, so that a flag given is known): on an existing deployment only the
# flags given change it
DEPLOY_DEFAULTS: dict[str, Any] = {"replicas": "1", "device": "any", "memory": "0", "priority": "0", "label": [],
                                   "zone": "", "max_batch": "0", "strategy": "binpack", "max_inflight": "0",
                                   "max_unavailable": None}
# the Deployment fields each of those flags sets
DEPLOY_FIELDS = {"replicas": ("replicas",), "device": ("device",), "memory": ("memory_bytes",),
                 "priority": ("priority",), "label": ("labels",), "zone": ("zone",), "max_batch": ("max_batch_size",),
                 "strategy": ("strategy",), "max_inflight": ("max_inflight",), "max_unavailable": ("max_unavailable",)}
CHUNK = 1 << 20
EXIT_FAILED = 1


class CliError(Exception):
    """A failure to report in one line (exit 1)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code  # the admin API's status code, when the controller answered with an error


def parse_size(text: str) -> int:
    """An argparse type: '512MiB', '2GB', '1048576' -> bytes (xpud.validate.parse_size)."""
    try:
        return _parse_size(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f}"


def add_commands(sub: Any, parser_class: type, controller_flag: Callable[[argparse.ArgumentParser], None]) -> None:
    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_)
        controller_flag(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    cmd("nodes", "list the nodes of the pool")
    cmd("pool", "every device of the pool: memory, utilisation, health, what runs on it")
    models = cmd("models", "list models, or push one: models push FILE --name N [--version V]")
    models.add_argument("action", nargs="?", choices=["push", "list"], default="list", help="list (default) or push")
    models.add_argument("path", nargs="?", metavar="FILE_OR_DIR",
                        help="push: an .onnx file, or a folder holding one (a Triton layout: its highest version)")
    models.add_argument("--name", help="model name (push)")
    models.add_argument("--version", help="model version (push; default: the next one)")
    deploy = cmd("deploy", "create a deployment; on an existing one, a new --model N:V rolls it out node by node")
    deploy.add_argument("name", help="the deployment's name: what clients call as the model name")
    deploy.add_argument("--model", required=True, metavar="N[:V]",
                        help="a pushed model, optionally a version (required; default version: the latest)")
    # values stay text here: xpud.validate checks them, with the same rules as an apply file's
    deploy.add_argument("--replicas", default=None, metavar="K",
                        help="0..1000 (default 1; 0 keeps the deployment with nothing running)")
    deploy.add_argument("--device", default=None, metavar="KIND", help="gpu, cpu or any (default any)")
    deploy.add_argument("--memory", default=None, metavar="SIZE", help=SIZE_HELP + " (default: measured or "
                        "estimated from the model)")
    deploy.add_argument("--priority", default=None, metavar="P", help="a whole number >= 0 (default 0)")
    deploy.add_argument("--label", action="append", default=None, metavar="k=v",
                        help="a node label replicas need, repeatable (default: none)")
    deploy.add_argument("--zone", default=None, metavar="Z", help="only nodes of this zone (default: any zone)")
    deploy.add_argument("--max-batch", default=None, metavar="B", help="a whole number >= 0 (default 0)")
    deploy.add_argument("--strategy", default=None, metavar="S", help="binpack or spread (default binpack)")
    deploy.add_argument("--max-inflight", default=None, metavar="N",
                        help="requests in flight per ready replica through the router; beyond it they wait in its "
                             "queue, by priority (default 0: no bound)")
    deploy.add_argument("--max-unavailable", default=None, metavar="K",
                        help="replicas a rolling update may take down at once (default: 0 where memory allows the "
                             "new version beside the old, else 1)")
    rollout = cmd("rollout", "a rolling update's progress: rollout status NAME")
    rollout.add_argument("action", choices=["status"], help="status")
    rollout.add_argument("name", help="the deployment")
    rollback = cmd("rollback", "return a deployment to its previous model version, node by node (or turn back the "
                   "rollout in progress)")
    rollback.add_argument("name", help="the deployment")
    apply = cmd("apply", "create or update deployments from a TOML or YAML document")
    apply.add_argument("-f", "--file", required=True, metavar="FILE",
                       help="a TOML ([[deployment]] tables) or YAML document (required)")
    cmd("deployments", "list deployments with their replicas and state")
    top = cmd("top", "the pool live: nodes, devices and their load, deployments and their traffic")
    top.add_argument("--interval", metavar="SECONDS", help="seconds between refreshes (default 1)")
    top.add_argument("--count", metavar="N", help="stop after N refreshes (default: until Ctrl-C)")
    traffic = cmd("traffic", "split a deployment's requests across model versions: traffic NAME 1=90 2=10")
    traffic.add_argument("name", help="the deployment")
    traffic.add_argument("weights", nargs="+", metavar="VERSION=PERCENT",
                         help="versions already pushed; percentages summing to 100")
    traffic.add_argument("--auto-rollback-error-rate", metavar="RATE",
                         help="put the weights before this change back should a version whose weight rises fail "
                              "more often than RATE, a fraction in (0, 1], over the router's last 30 s (once it "
                              "has 20 requests there)")
    undeploy = cmd("undeploy", "remove a deployment")
    undeploy.add_argument("name", help="the deployment")
    events = cmd("events", "the controller's events")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    events.add_argument("--since", metavar="WHEN", help="only events since then: a duration ago (30s, 10m, 2h, 1d) "
                        "or a local time (2026-12-04 10:00, 2026-12-04T10:00:00) (default: all)")
    events.add_argument("--limit", metavar="N", help="only the last N events (default: the first 1000)")
    tokens = cmd("tokens", "API tokens for clients without a certificate: tokens create --name N --role R, "
                 "tokens revoke N, tokens list")
    tokens.add_argument("action", nargs="?", choices=["create", "revoke", "list"], default="list",
                        help="list (default), create or revoke")
    tokens.add_argument("token_name", nargs="?", metavar="NAME", help="the token to revoke")
    tokens.add_argument("--name", help="name of the new token (create)")
    tokens.add_argument("--role", choices=list(ROLES), help="what the token may do (create)")
    for name, help_ in (("drain", "stop placing on a node and move its replicas away"),
                        ("uncordon", "let a node take replicas again"), ("cordon", "stop placing on a node")):
        p = cmd(name, help_)
        p.add_argument("node", help="the node's name (as `xpud nodes` lists it)")
        if name == "drain":
            p.add_argument("--force", action="store_true", help="drain even if a deployment is left with no "
                           "ready replica (default: ask on a terminal, else refuse)")


class Admin:
    def __init__(self, target: str, tls: TlsFiles | None = None, token: str | None = None) -> None:
        self.target = target
        options = [("grpc.max_send_message_length", 64 << 20)]
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        if token and (tls is None or not tls.enabled):  # a bearer token is a password: never in plaintext
            raise CliError("a token is sent over TLS only: give --tls-ca (the CA of the controller's certificate) "
                           "and the controller's token port (--controller HOST:PORT)")
        if tls is not None and tls.enabled:
            try:
                creds = channel_credentials(tls)
            except CredentialsError as exc:
                raise CliError(str(exc)) from None
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = admin_pb2_grpc.AdminStub(self.channel)

    def call(self, method: str, request: Any, timeout: float = 30.0) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise _error(exc, self.target) from None

    def change(self, method: str, request: Any) -> Any:
        """`call` for a change whose refusal as bad input (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION:
        nothing changed) is a usage error: ValidationError, exit 2."""
        try:
            return self.call(method, request)
        except CliError as exc:
            if exc.code in BAD_INPUT:
                raise ValidationError(str(exc)) from None
            raise


def _error(exc: grpc.RpcError, target: str) -> CliError:
    code = exc.code() if hasattr(exc, "code") else None
    if code is grpc.StatusCode.UNAVAILABLE:
        return CliError(f"cannot reach the controller at {target} (is `xpud controller` running? "
                        "set --controller or XPUD_CONTROLLER; a controller with TLS needs --tls-ca, with mTLS also "
                        "--tls-cert and --tls-key)")
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return CliError(details or str(code), code)


def load_document(path: str) -> list[tuple[apb.Deployment, list[str]]]:
    """Deployments from TOML ([[deployment]] tables) or YAML (a mapping, a list, or {deployments: [...]})."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValidationError(f"cannot read {path!r}: {exc.strerror}") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise CliError("YAML documents need PyYAML (pip install pyyaml); or write TOML") from None
        try:
            data: Any = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValidationError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValidationError(f"{path} is not valid TOML: {exc}") from None
    if isinstance(data, dict):
        items = data.get("deployment", data.get("deployments", [data] if "name" in data else []))
    else:
        items = data
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise ValidationError(f"{path} holds no deployment (expected [[deployment]] tables with name and model)")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationError(f"{path}: deployment #{i + 1} must be a table of keys, got {item!r}")
        what = f"deployment {item['name']!r}" if "name" in item else f"deployment #{i + 1}"
        if unknown := unknown_keys(item, what):
            raise ValidationError(f"{path}: {'; '.join(unknown)}")
        for key in ("name", "model"):
            if key not in item:
                raise ValidationError(f"{path}: {what} has no {key!r} (it needs name and model)")
        try:
            out.append(deployment(item))
        except ValidationError as exc:
            raise ValidationError(f"{path}: {what}: {exc}") from None
    return out


def _chunks(path: Path, name: str, version: str) -> Iterator[apb.PushModelChunk]:
    with path.open("rb") as f:
        first = True
        while True:
            data = f.read(CHUNK)
            if first:
                yield apb.PushModelChunk(name=name, version=version, filename=path.name, data=data)
                first = False
            elif data:
                yield apb.PushModelChunk(data=data)
            if not data:
                return


def _best_on(m: apb.ModelInfo) -> str:
    """The device model the router measured the best throughput per GiB on (`xpud models`' BEST ON)."""
    measured = [p for p in m.profile if p.throughput_per_gib > 0]
    if not measured:
        return NA
    best = max(measured, key=lambda p: (p.throughput_per_gib, p.device_model))
    return f"{best.device_model} ({best.throughput_rps:.1f} req/s, {best.throughput_per_gib:.3g}/GiB)"


def _tensor(t: apb.TensorInfo) -> str:
    """An input or output as "name FP32 [batch,4]": a dynamic dimension by its name, else -1."""
    names = list(t.dim_names) + [""] * (len(t.shape) - len(t.dim_names))
    return f"{t.name} {t.datatype} [{','.join(n or str(d) for d, n in zip(t.shape, names, strict=False))}]"


def _model_file(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("**/model.onnx")) or sorted(p.glob("**/*.onnx"))
        if not found:
            raise CliError(f"no .onnx file under {path!r}")
        return found[-1]  # in a Triton layout, the highest version
    if not p.is_file():
        raise CliError(f"{path!r} does not exist")
    return p


def _print(args: argparse.Namespace, message: Any, rows: Callable[[], str]) -> None:
    if args.json:
        print(json.dumps(message_dict(message), indent=2))
    else:
        print(rows())


def _specs(args: argparse.Namespace) -> list[apb.Deployment]:
    """The deployments of `deploy` or `apply`, checked (ValidationError) before any call; notes go to stderr."""
    if args.command == "deploy":
        try:
            flags = {flag: default if getattr(args, flag) is None else getattr(args, flag)
                     for flag, default in DEPLOY_DEFAULTS.items()}
            checked = [deployment({"name": args.name, "model": args.model, "replicas": flags["replicas"],
                                   "device": flags["device"], "memory": flags["memory"],
                                   "priority": flags["priority"], "labels": flags["label"], "zone": flags["zone"],
                                   "max_batch": flags["max_batch"], "strategy": flags["strategy"],
                                   "max_inflight": flags["max_inflight"],
                                   "max_unavailable": flags["max_unavailable"]})]
        except ValidationError as exc:  # name the flag: "--max-batch must be ..."
            field, _, rest = str(exc).partition(" ")
            flag = "--" + field.replace("_", "-") if field in DEPLOY_FLAGS else field
            raise ValidationError(f"{flag} {rest}") from None
    else:
        checked = load_document(args.file)
    for _, notes in checked:
        for note in notes:
            print(f"xpud {args.command}: note: {note}", file=sys.stderr)
    return [spec for spec, _ in checked]


def _weights(items: list[str]) -> list[apb.VersionWeight]:
    """`traffic`'s VERSION=PERCENT arguments (ValidationError: not of that form)."""
    out = []
    for item in items:
        version, sep, weight = item.partition("=")
        if not sep or not version or not weight.strip().isdigit():
            raise ValidationError(f"expected VERSION=PERCENT (e.g. 1=90 2=10), got {item!r}")
        out.append(apb.VersionWeight(version=version.strip(), weight=int(weight)))
    return out


def _rollback_rate(text: str | None) -> float:
    """`traffic`'s --auto-rollback-error-rate (ValidationError: not a fraction in (0, 1]); 0: not given."""
    if text is None:
        return 0.0
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if math.isnan(rate) or not 0 < rate <= 1:
        raise ValidationError(f"--auto-rollback-error-rate must be a fraction within (0, 1], e.g. 0.05, not {text!r}")
    return rate


BAD_INPUT = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)


def run(args: argparse.Namespace) -> int:
    specs = _specs(args) if args.command in ("deploy", "apply") else []
    weights = _weights(args.weights) if args.command == "traffic" else []
    rollback = _rollback_rate(args.auto_rollback_error_rate) if args.command == "traffic" else 0.0
    tls = TlsFiles.from_env(args.tls_ca, args.tls_cert, args.tls_key)
    token = args.token or os.environ.get("XPUD_TOKEN") or None
    if missing := _tokens_usage(args):
        raise ValidationError(missing)
    admin = Admin(args.controller or os.environ.get("XPUD_CONTROLLER") or DEFAULT_CONTROLLER, tls, token)
    command = args.command
    if command == "nodes":
        reply = admin.call("ListNodes", apb.ListNodesRequest())
        _print(args, reply, lambda: table(
            ["NAME", "STATE", "DEVICES", "ZONE", "LABELS", "ENDPOINT", "GENERATION", "LAST SEEN"],
            [[n.name, n.state + (",cordoned" if n.cordoned else ""), str(n.devices), n.zone or NA,
              ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or NA, n.inference_endpoint or NA,
              f"{n.generation_observed}/{n.generation_desired}",
              f"{time.time() - n.last_seen:.0f}s ago" if n.last_seen else NA] for n in reply.nodes]))
    elif command == "pool":
        reply = admin.call("GetPool", apb.GetPoolRequest())
        _print(args, reply, lambda: _pool_table(reply))
    elif command == "top":
        _top(admin, args)
    elif command == "models":
        if args.action == "push":
            if not args.path or not args.name:
                raise CliError("usage: xpud models push FILE_OR_DIR --name N [--version V]")
            path = _model_file(args.path)
            try:
                reply = admin.stub.PushModel(_chunks(path, args.name, args.version or ""), timeout=600,
                                             metadata=admin.metadata)
            except grpc.RpcError as exc:
                raise _error(exc, admin.target) from None
            _print(args, reply, lambda: "\n".join([
                f"pushed {reply.name}:{reply.version} ({reply.size_bytes} bytes, sha256 {reply.digest[:12]})",
                *(f"  input  {_tensor(t)}" for t in reply.inputs), *(f"  output {_tensor(t)}" for t in reply.outputs)]))
        else:
            reply = admin.call("ListModels", apb.ListModelsRequest())
            _print(args, reply, lambda: table(["NAME", "VERSION", "SIZE", "SHA256", "INPUTS", "OUTPUTS", "BEST ON"], [
                [m.name, m.version, f"{m.size_bytes}", m.digest[:12], ", ".join(map(_tensor, m.inputs)) or NA,
                 ", ".join(map(_tensor, m.outputs)) or NA, _best_on(m)] for m in reply.models]))
    elif command == "deploy":
        replies = [_deploy(admin, args, spec) for spec in specs]
        response = apb.ListDeploymentsResponse(deployments=replies)
        _print(args, response, lambda: _deployments_view(replies))
    elif command == "apply":
        replies = [admin.call("ApplyDeployment", spec) for spec in specs]
        response = apb.ListDeploymentsResponse(deployments=replies)
        _print(args, response, lambda: _deployments_view(replies))
    elif command == "rollout":
        found = _deployment(admin, args.name)
        if found is None:
            raise ValidationError(f"unknown deployment {args.name!r}")
        _print(args, found.rollout, lambda: _rollout_text(found))
    elif command == "rollback":
        reply = admin.change("Rollback", apb.RollbackRequest(name=args.name))  # nothing to roll back to: exit 2
        _print(args, reply, lambda: _rollout_text(reply))
    elif command == "deployments":
        reply = admin.call("ListDeployments", apb.ListDeploymentsRequest())
        _print(args, reply, lambda: _deployments_view(reply.deployments))
    elif command == "traffic":
        reply = admin.change("SetTraffic", apb.SetTrafficRequest(name=args.name, weights=weights,
                                                                 auto_rollback_error_rate=rollback))
        _print(args, reply, lambda: _deployments_table([reply]))
    elif command == "undeploy":
        admin.call("DeleteDeployment", apb.DeleteDeploymentRequest(name=args.name))
        print(json.dumps({"deleted": args.name}) if args.json else f"deployment {args.name} removed")
    elif command == "events":
        _events(admin, args)
    elif command == "tokens":
        _tokens(admin, args)
    elif command in ("drain", "cordon", "uncordon"):
        if command == "drain" and not args.force:
            _check_drain(admin, args.node)
        request = apb.SetCordonRequest(node=args.node, cordoned=command != "uncordon", drain=command == "drain")
        reply = admin.call("SetCordon", request)
        _print(args, reply, lambda: f"node {reply.name}: {reply.state}" + (", cordoned" if reply.cordoned else ""))
    return 0


def _tokens_usage(args: argparse.Namespace) -> str | None:
    """What a `tokens` command lacks, checked before any call."""
    if args.command != "tokens":
        return None
    if args.action == "create" and not (args.name and args.role):
        return f"tokens create needs --name NAME and --role {'|'.join(ROLES)}"
    if args.action == "revoke" and not (args.token_name or args.name):
        return "tokens revoke needs the token's NAME"
    return None


def _tokens(admin: Admin, args: argparse.Namespace) -> None:
    if args.action == "create":
        reply = admin.call("CreateToken", apb.CreateTokenRequest(name=args.name, role=args.role))
        if args.json:
            print(json.dumps(message_dict(reply), indent=2))
            return
        print(reply.token)
        print(f"xpud tokens: token {reply.info.name!r} (role {reply.info.role}) created; it is shown this once, "
              "only its hash is kept. Clients send it with --token or XPUD_TOKEN.", file=sys.stderr)
    elif args.action == "revoke":
        reply = admin.call("RevokeToken", apb.RevokeTokenRequest(name=args.token_name or args.name))
        _print(args, reply, lambda: f"token {reply.name} revoked")
    else:
        reply = admin.call("ListTokens", apb.ListTokensRequest())
        _print(args, reply, lambda: table(["NAME", "ROLE", "ID", "CREATED", "BY"], [
            [t.name, t.role, t.id, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t.created)), t.creator or NA]
            for t in reply.tokens]))


def _deploy(admin: Admin, args: argparse.Namespace, spec: apb.Deployment) -> apb.DeploymentStatus:
    """`deploy`: create the deployment; when it exists, change what the flags given say (a new model version
    rolls out node by node; --replicas 0 stops it, keeping it), or refuse as the controller does if none does."""
    try:
        return admin.call("CreateDeployment", spec)
    except CliError as exc:
        if exc.code is not grpc.StatusCode.ALREADY_EXISTS:
            raise
        held = _deployment(admin, spec.name)
        given = [flag for flag in DEPLOY_DEFAULTS if getattr(args, flag) is not None]
        if held is None or ((held.spec.model, held.spec.version) == (spec.model, spec.version) and not given):
            raise
        update = apb.Deployment()
        update.CopyFrom(held.spec)
        update.model, update.version = spec.model, spec.version
        for flag in given:
            for field in DEPLOY_FIELDS[flag]:
                if field == "labels":
                    update.labels.clear()
                    update.labels.update(spec.labels)
                else:
                    setattr(update, field, getattr(spec, field))
    reply = admin.change("ApplyDeployment", update)
    if reply.rollout.state and not args.json:
        print(f"rolling out {reply.rollout.to_model}:{reply.rollout.to_version} on {spec.name} node by node; "
              f"follow it with `xpud rollout status {spec.name}`", file=sys.stderr)
    return reply


def _deployment(admin: Admin, name: str) -> apb.DeploymentStatus | None:
    """One deployment's status (None: there is none of that name)."""
    listed = admin.call("ListDeployments", apb.ListDeploymentsRequest()).deployments
    return next((d for d in listed if d.spec.name == name), None)


def _check_drain(admin: Admin, node: str) -> None:
    """Before a drain with no other node to move to: the deployments whose every ready replica is on `node`
    would have none; asked on a terminal, else refused (ValidationError: exit 2) unless --force."""
    others = [n.name for n in admin.call("ListNodes", apb.ListNodesRequest()).nodes
              if n.name != node and n.state == "Ready" and not n.cordoned]
    if others:  # a replica moved to another node keeps serving on this one till it is ready there (handover)
        return
    alone = []
    for d in admin.call("ListDeployments", apb.ListDeploymentsRequest()).deployments:
        ready = [r.node for r in d.replicas if r.state == "READY"]
        if ready and all(n == node for n in ready):
            alone.append(d.spec.name)
    if not alone:
        return
    what = f"draining {node} leaves {', '.join(alone)} with no ready replica: no other node takes replicas"
    if sys.stdin.isatty() and sys.stderr.isatty():
        sys.stderr.write(f"xpud drain: {what}. Drain anyway? [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() in ("y", "yes"):
            return
        raise ValidationError("not drained")
    raise ValidationError(f"{what}; nothing changed (pass --force to drain anyway)")


def _rollout_text(d: apb.DeploymentStatus) -> str:
    """`rollout status`: the rollout in progress, node by node, or what the deployment serves and could go back to."""
    r, spec = d.rollout, d.spec
    previous = f"; `xpud rollback {spec.name}` returns to {r.previous_model}:{r.previous_version}" \
        if r.previous_model else ""
    if not r.state:
        serving = sorted({x.version for x in d.replicas if x.state == "READY"}) or [spec.version or "latest"]
        return f"deployment {spec.name}: no rollout in progress; serving {spec.model}:{','.join(serving)} " \
               f"({d.ready}/{spec.replicas} ready){previous}"
    what = "rolling back" if r.rollback else "rolling out"
    lines = [f"deployment {spec.name}: {what} {r.from_model}:{r.from_version} -> {r.to_model}:{r.to_version}: "
             f"{r.state}, {r.updated}/{r.nodes} node(s) updated, started {time.time() - r.started:.0f}s ago"]
    if r.reason:
        lines.append(f"  paused: {r.reason}")
    lines.append(table(["NODE", "STATE", "SERVING"], [[n.node, n.state, n.version or NA] for n in r.per_node]))
    return "\n".join(lines)


def _deployments_view(items: Any) -> str:
    """The deployments' table, then a line per rollout in progress."""
    lines = [_deployments_table(items)]
    for d in items:
        r = d.rollout
        if r.state:
            lines.append(f"{d.spec.name}: {'rolling back' if r.rollback else 'rolling out'} {r.from_model}:"
                         f"{r.from_version} -> {r.to_model}:{r.to_version}, {r.updated}/{r.nodes} node(s) updated"
                         + (f" (paused: {r.reason})" if r.reason else ""))
    return "\n".join(lines)


def _pool_table(reply: apb.GetPoolResponse) -> str:
    rows = []
    for d in reply.devices:
        s = d.sample if d.HasField("sample") else None
        free = d.device.memory_total - d.memory_allocated
        util = f"{s.utilization * 100:.0f}%" if s is not None and s.HasField("utilization") else NA
        health = {1: "ok", 2: "degraded", 3: "failed"}.get(s.health, "unknown") if s is not None else "unknown"
        judged = {2: "suspect", 3: "unhealthy", 4: "recovering"}.get(s.health_state) if s is not None else None
        if judged:  # the agent's health state, when the device is not healthy
            health += f", {judged}"
        rows.append([d.node, d.device.id, d.device.model, f"{_gib(d.memory_allocated)}/"
                     f"{_gib(d.device.memory_total)} GiB", f"{_gib(free)} GiB", util, health,
                     ",".join(d.replicas) or "-"])
    return table(["NODE", "DEVICE", "MODEL", "ALLOCATED/TOTAL", "FREE", "UTIL", "HEALTH", "RUNS"], rows)


def _top_frame(admin: Admin, nodes_reply: apb.ListNodesResponse, pool: apb.GetPoolResponse,
               deployments_reply: apb.ListDeploymentsResponse) -> str:
    """One screen of `top`: nodes, every device with its load, every deployment with its live figures."""
    nodes, deployments = nodes_reply.nodes, deployments_reply.deployments
    states: dict[str, int] = {}
    for n in nodes:
        states[n.state] = states.get(n.state, 0) + 1
    head = (f"xpud top  {time.strftime('%H:%M:%S')}  {admin.target}  nodes: "
            + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none")
            + f"  devices: {len(pool.devices)}  deployments: {len(deployments)}")
    rows = []
    for d in deployments:
        rate = sum(v.request_rate for v in d.versions)
        requests = sum(v.requests for v in d.versions)
        errors = sum(v.error_rate * v.requests for v in d.versions) / requests if requests else 0.0
        p99 = max((v.p99_ms for v in d.versions if v.requests), default=None)
        rows.append([d.spec.name, f"{d.ready}/{d.spec.replicas}", d.phase, f"{rate:.1f}", f"{errors * 100:.1f}%",
                     f"{p99:.1f} ms" if p99 is not None else NA, d.reason or ""])
    return "\n".join([head, "", _pool_table(pool), "",
                      table(["DEPLOYMENT", "READY", "PHASE", "REQ/S", "ERRORS", "P99", "REASON"], rows)])


def _top(admin: Admin, args: argparse.Namespace) -> None:
    """`top`: the pool live, a frame per --interval (the screen redrawn on a terminal), until Ctrl-C or --count."""
    interval = _positive_number("--interval", args.interval, 1.0)
    count = int(_positive_number("--count", args.count, 0)) if args.count is not None else 0
    redraw = sys.stdout.isatty()
    shown = 0
    try:
        while True:
            replies = (admin.call("ListNodes", apb.ListNodesRequest()), admin.call("GetPool", apb.GetPoolRequest()),
                       admin.call("ListDeployments", apb.ListDeploymentsRequest()))
            if args.json:  # one object per refresh, a line each
                out = json.dumps(dict(zip(("nodes", "pool", "deployments"), map(message_dict, replies),
                                          strict=True))) + "\n"
            else:
                out = ("\x1b[H\x1b[2J" if redraw else ("\n" if shown else "")) + _top_frame(admin, *replies) + "\n"
            sys.stdout.write(out)
            sys.stdout.flush()
            shown += 1
            if count and shown >= count:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def _positive_number(flag: str, text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValidationError(f"{flag} must be a number > 0, got {text!r}")
    return value


def _deployments_table(items: Any) -> str:
    rows = []
    for d in items:
        spec = d.spec
        where = ", ".join(f"{r.node}/{r.device}:{r.state}" for r in d.replicas) or "-"
        model = f"{spec.model}:{spec.version or 'latest'}"
        if spec.traffic:  # a split: each version's weight and ready/placed replicas
            model = spec.model + " " + ",".join(f"{v.version}={v.weight}%({v.ready}/{v.replicas})"
                                                for v in d.versions)
        rows.append([spec.name, model, f"{d.ready}/{spec.replicas}", d.phase, spec.device, where, d.reason or ""])
    lines = table(["NAME", "MODEL", "READY", "PHASE", "DEVICE", "REPLICAS", "REASON"], rows).split("\n")
    out = lines[:1]
    for d, line in zip(items, lines[1:], strict=True):  # each deployment's row, then a line per version under it
        out.append(line)
        out.extend(_version_line(v) for v in d.versions)
        if d.spec.auto_rollback_error_rate:
            out.append(f"  auto-rollback: the weights before the last traffic change come back above "
                       f"{d.spec.auto_rollback_error_rate:g} errors")
    return "\n".join(out)


def _version_line(v: apb.VersionStatus) -> str:
    """One version's weight, replicas and live figures (the router's last 30 s)."""
    latency = f"p50 {v.p50_ms:.1f} ms  p99 {v.p99_ms:.1f} ms" if v.requests else "p50 -  p99 -"
    return (f"  version {v.version}: weight {v.weight}%  replicas {v.ready}/{v.replicas}  {v.request_rate:.1f} req/s"
            f"  errors {v.error_rate * 100:.1f}% of {v.requests}  {latency}")


DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """`--since`: "10m" (ago), "2026-12-04 10:00" or "2026-12-04T10:00:00" (local time) -> unix time."""
    text = text.strip()
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in DURATION:
        return now - float(text[:-1]) * DURATION[text[-1]]
    for form in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text, form))
        except ValueError:
            continue
    raise ValidationError(f"--since {text!r} is not understood: use a duration ago (30s, 10m, 2h, 1d) or a local "
                          "time (2026-12-04 10:00)")


def fold(events: list[apb.Event], within: float = 1.0) -> list[tuple[apb.Event, int]]:
    """Repeats of one event (kind, subject, message, actor) within `within` seconds of the first: one, counted."""
    out: list[tuple[apb.Event, int]] = []
    for e in events:
        if out:
            first, count = out[-1]
            same = (first.kind, first.subject, first.message, first.actor) == (e.kind, e.subject, e.message, e.actor)
            if same and e.time - first.time <= within:
                out[-1] = (first, count + 1)
                continue
        out.append((e, 1))
    return out


def _events(admin: Admin, args: argparse.Namespace) -> None:
    def line(e: apb.Event, count: int = 1) -> str:
        if args.json:
            return json.dumps(message_dict(e))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
        repeated = f" (x{count})" if count > 1 else ""
        return f"{stamp}  {e.kind:<18} {e.subject:<20} {e.actor or 'controller':<16} {e.message}{repeated}"

    request = apb.ListEventsRequest()
    if args.since:
        request.since = parse_since(args.since, time.time())
    if args.limit is not None:
        if not args.limit.isdigit() or not 0 < int(args.limit) <= 100_000:
            raise ValidationError(f"--limit must be a whole number 1..100000, got {args.limit!r}")
        request.limit, request.newest = int(args.limit), True
    if not args.follow:
        reply = admin.call("ListEvents", request)
        if args.json:
            print(json.dumps(message_dict(reply), indent=2))
        else:
            for e, count in fold(list(reply.events)):
                print(line(e, count))
        return
    try:
        for e in admin.stub.WatchEvents(request, metadata=admin.metadata):
            print(line(e), flush=True)
    except grpc.RpcError as exc:
        raise _error(exc, admin.target) from None
    except KeyboardInterrupt:
        pass


def fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(EXIT_FAILED)
