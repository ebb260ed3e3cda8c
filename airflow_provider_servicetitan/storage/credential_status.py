"""The health of each credential as the last sync left it: ``ok``, ``degraded`` or ``needs_attention``."""

from __future__ import annotations

from sqlalchemy import case

from airflow_provider_servicetitan.storage.base import StoreBase, now, select_fields, to_model
from airflow_provider_servicetitan.storage.dialects import upsert
from airflow_provider_servicetitan.storage.models import CredentialState, CredentialStatus
from airflow_provider_servicetitan.storage.schema import CREDENTIAL_STATUSES


class CredentialStatuses(StoreBase):
    """Recording and reading a credential's health."""

    def set_credential_status(
        self,
        credential: str,
        status: CredentialState,
        reason: str | None = None,
        secret_fingerprint: str | None = None,
    ) -> CredentialStatus:
        """Record a credential's health. ``since`` moves only when the status changes.

        :returns: the stored status.
        """
        if status not in CREDENTIAL_STATUSES:
            raise ValueError(f"credential status must be one of {', '.join(CREDENTIAL_STATUSES)}, not {status!r}")
        table = self.tables.credential_status
        updated = now()
        with self.engine.begin() as conn:
            upsert(
                conn,
                table,
                [
                    {
                        "credential": credential,
                        "status": status,
                        "since": updated,
                        "reason": reason,
                        "secret_fingerprint": secret_fingerprint,
                        "updated_at": updated,
                    }
                ],
                conflict=("credential",),
                update=lambda new: {
                    "status": new.status,
                    "since": case((table.c.status == new.status, table.c.since), else_=new.since),
                    "reason": new.reason,
                    "secret_fingerprint": new.secret_fingerprint,
                    "updated_at": new.updated_at,
                },
            )
            row = conn.execute(select_fields(CredentialStatus, table).where(table.c.credential == credential)).one()
        return to_model(CredentialStatus, row)

    def get_credential_status(self, credential: str) -> CredentialStatus | None:
        """A credential's last recorded health, or ``None``."""
        table = self.tables.credential_status
        return self._fetch_one(
            CredentialStatus, select_fields(CredentialStatus, table).where(table.c.credential == credential)
        )
