#!/usr/bin/env bash
# Until the first release, the schema is one migration generated from the
# models. After a release, add new revisions with
#   alembic -x ... revision --autogenerate -m "..."
# instead of regenerating.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -f storage/migrations/versions/0001_initial_schema.py
tmp=$(mktemp -d)
python - "$tmp" <<'PY'
import sys
from alembic import command
from workers.migrate import alembic_config
command.revision(alembic_config(f"sqlite:///{sys.argv[1]}/schema.db"), message="initial schema",
                 autogenerate=True, rev_id="0001")
PY
rm -rf "$tmp"
