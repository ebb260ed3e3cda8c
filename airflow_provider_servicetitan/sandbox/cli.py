"""``servicetitan-sandbox``: run a sandbox until SIGINT or SIGTERM, printing where and how to call it.

``servicetitan-sandbox airflow-connections --url URL`` turns the credentials of a running sandbox into
the JSON file ``airflow connections import`` reads (one ``servicetitan`` connection per credential)
and prints the Airflow commands that register them. It reads ``GET /_sandbox/config`` and imports
no Airflow (the sandbox imports only the catalogue and errors of the provider).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_provider_servicetitan.sandbox.admin import SandboxAdmin, SandboxAdminError
from airflow_provider_servicetitan.sandbox.config import SandboxConfig
from airflow_provider_servicetitan.sandbox.knobs import FAULT_KNOBS, PROFILES
from airflow_provider_servicetitan.sandbox.server import SandboxServer

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_DEFAULTS = SandboxConfig()
CONNECTIONS_COMMAND = "airflow-connections"
CONNECTIONS_VARIABLE = "servicetitan_connections"
DEFAULT_PREFIX = "servicetitan_sandbox_"


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _unlicensed(text: str) -> tuple[int, list[str]]:
    tenant, modules = _key_value(text)
    if not tenant.isdigit():
        raise argparse.ArgumentTypeError(f"expected TENANT=MODULE[,MODULE...], got {text!r}")
    return int(tenant), [module.strip() for module in modules.split(",") if module.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servicetitan-sandbox",
        description="A local fake of the ServiceTitan API with reproducible fault injection.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Airflow connections for a running sandbox: servicetitan-sandbox {CONNECTIONS_COMMAND} --url URL",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    add("--port", type=int, default=8765, help="port to listen on, 0 for a free one (default: %(default)s)")
    add("--tenants", type=int, default=_DEFAULTS.tenants, help="number of tenants (default: %(default)s)")
    add("--records", type=int, default=_DEFAULTS.records, help="records per tenant per resource")
    add("--seed", type=int, default=_DEFAULTS.seed, help="seed of data, credentials and faults")
    add("--faults", default="none", choices=sorted(PROFILES), help="fault profile (default: %(default)s)")
    add(
        "--fault",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"fault knob, repeatable; knobs: {', '.join(FAULT_KNOBS)}",
    )
    add("--token-expires-in", type=int, default=_DEFAULTS.token_expires_in, help="token lifetime, seconds")
    add("--token-rate-limit", type=int, default=_DEFAULTS.token_rate_limit, help="token requests/min/client")
    add("--rate-limit", type=int, default=_DEFAULTS.rate_limit, help="API calls/s per app key and tenant")
    add("--recent-changes-delay", type=float, default=_DEFAULTS.recent_changes_delay, help="seconds")
    add("--max-page-size", type=int, default=_DEFAULTS.max_page_size)
    add("--export-page-size", type=int, default=_DEFAULTS.export_page_size)
    add(
        "--unlicensed",
        type=_unlicensed,
        action="append",
        default=[],
        metavar="TENANT=MODULE[,MODULE]",
        help="modules a tenant has not licensed (403), repeatable",
    )
    add("--log-level", default=_DEFAULTS.log_level, help="uvicorn log level (default: %(default)s)")
    return parser


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    return SandboxConfig(
        tenants=args.tenants,
        records=args.records,
        seed=args.seed,
        faults=args.faults,
        fault_overrides=dict(args.fault),
        token_expires_in=args.token_expires_in,
        token_rate_limit=args.token_rate_limit,
        rate_limit=args.rate_limit,
        recent_changes_delay=args.recent_changes_delay,
        max_page_size=args.max_page_size,
        export_page_size=args.export_page_size,
        unlicensed_modules=dict(args.unlicensed),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
    )


def banner(sandbox: SandboxServer) -> str:
    """What a user needs to point a client at ``sandbox``."""
    config = sandbox.config
    lines = [
        f"ServiceTitan sandbox listening on {sandbox.base_url}",
        f"  token URL: {sandbox.token_url}",
        f"  admin:     {sandbox.base_url}/_sandbox/config",
        f"  app key:   {sandbox.credentials[0].app_key}",
        f"  faults:    {config.faults} {dict(config.fault_overrides) or ''}".rstrip(),
    ]
    lines += [
        f"  tenant {c.tenant_id}: client_id={c.client_id} client_secret={c.client_secret}" for c in sandbox.credentials
    ]
    lines.append("Press Ctrl+C to stop.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then stop cleanly (exit status 0); or run a subcommand."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == [CONNECTIONS_COMMAND]:
        return airflow_connections_main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    # Block the stop signals before the server thread starts (it inherits the mask), then wait for them.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    with SandboxServer(config) as sandbox:
        print(banner(sandbox), flush=True)
        signal.sigwait(_STOP_SIGNALS)
    print("ServiceTitan sandbox stopped.", flush=True)
    return 0


def build_connections_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"servicetitan-sandbox {CONNECTIONS_COMMAND}",
        description=(
            "Write the Airflow connections of a running sandbox's credentials (the JSON `airflow connections "
            "import` reads) and print the commands that register them and the Variable of the servicetitan_sync DAG."
        ),
    )
    add = parser.add_argument
    add("--url", required=True, help="base URL of the running sandbox, e.g. http://127.0.0.1:8765")
    add("--prefix", default=DEFAULT_PREFIX, help="connection id prefix; the tenant id follows (default: %(default)s)")
    add("--output", type=Path, help="file to write the JSON to (default: standard output, commands on stderr)")
    return parser


def sandbox_connections(url: str, prefix: str = DEFAULT_PREFIX) -> dict[str, dict[str, Any]]:
    """One ``servicetitan`` connection per credential of the sandbox at ``url``, by connection id.

    The fields are those of the README's connection section; ``extra`` is a JSON text, as Airflow
    stores it. The sandbox is both the token endpoint and the API host.

    :raises SandboxAdminError: the sandbox refused ``GET /_sandbox/config``.
    :raises requests.RequestException: nothing answers at ``url``.
    """
    base_url = url.rstrip("/")
    config = SandboxAdmin(base_url).config()
    return {
        f"{prefix}{credential['tenant_id']}": {
            "conn_type": "servicetitan",
            "description": f"ServiceTitan sandbox tenant {credential['tenant_id']} at {base_url}",
            "login": credential["client_id"],
            "password": credential["client_secret"],
            "extra": json.dumps(
                {
                    "app_key": config["app_key"],
                    "tenant_id": str(credential["tenant_id"]),
                    "environment": "integration",
                    "auth_url": f"{base_url}/connect/token",
                    "api_url": base_url,
                }
            ),
        }
        for credential in config["credentials"]
    }


def registration_commands(connection_ids: Sequence[str], file: Path | str) -> list[str]:
    """The shell commands that import ``file`` and point the ``servicetitan_sync`` DAG at the connections."""
    return [
        f"airflow connections import --overwrite {shlex.quote(str(file))}",
        f"airflow variables set {CONNECTIONS_VARIABLE} {shlex.quote(json.dumps(list(connection_ids)))}",
    ]


def airflow_connections_main(argv: Sequence[str]) -> int:
    """``servicetitan-sandbox airflow-connections``: exit status 0, or 1 when the sandbox cannot be read."""
    args = build_connections_parser().parse_args(argv)
    try:
        found = sandbox_connections(args.url, args.prefix)
    except (SandboxAdminError, OSError) as exc:  # requests' errors are OSErrors
        print(f"cannot read the sandbox's credentials at {args.url}: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(found, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        notes, file = sys.stderr, "connections.json"
    else:
        # Client secrets and app keys: readable by the owner only, as any secrets file.
        args.output.touch(mode=0o600, exist_ok=True)
        args.output.chmod(0o600)
        args.output.write_text(text)
        notes, file = sys.stdout, str(args.output)
        print(f"Wrote {len(found)} Airflow connection(s) to {file}.", file=notes)
    print("Register them and the DAG's Variable with:", file=notes)
    for command in registration_commands(list(found), file):
        print(f"  {command}", file=notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
