"""The usage ledger: every call, durably recorded and queryable.

- `ledger.py`: `Ledger`, the journal-then-SQLite writer and its queries;
- `journal.py`: the CRC-framed per-process journals; `store.py`: the SQLite schema and
  `UsageRecord`; `quarantine.py`: records SQLite refuses, kept aside;
- `call.py`: the one builder of a call's record, used by Guard, the provider layer and the
  sidecar alike.
"""

from .ledger import Ledger
from .store import UsageRecord

__all__ = ["Ledger", "UsageRecord"]
