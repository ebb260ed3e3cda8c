"""Client-credentials tokens shared by every worker process of one credential.

* :mod:`.endpoint`: the grant itself (one POST, the answer parsed, errors without secrets);
* :mod:`.cache`: the shared encrypted token cache in Redis (key, lock, rejection marker);
* :mod:`.manager`: :class:`TokenManager`, the per-process cache and single-flight renewal.
"""

from airflow_provider_servicetitan.client.auth.cache import fernet_from_secret, token_cache_key, token_fingerprint
from airflow_provider_servicetitan.client.auth.manager import TokenManager

__all__ = [
    "TokenManager",
    "fernet_from_secret",
    "token_cache_key",
    "token_fingerprint",
]
