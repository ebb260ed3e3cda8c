"""``servicetitan-sandbox``: run a sandbox until SIGINT or SIGTERM, printing where and how to call it."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence

from airflow_provider_servicetitan.sandbox.config import SandboxConfig
from airflow_provider_servicetitan.sandbox.knobs import FAULT_KNOBS, PROFILES
from airflow_provider_servicetitan.sandbox.server import SandboxServer

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_DEFAULTS = SandboxConfig()


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
    """Serve until SIGINT or SIGTERM, then stop cleanly (exit status 0)."""
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
