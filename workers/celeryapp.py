"""Entry point for Celery's own tools (`celery -A workers.celeryapp flower|inspect`).

Loads the settings from the environment once, configures the app and
registers the tasks. artwatch's own commands configure the app themselves.
"""

from config.settings import load_settings
from workers.app import configure

app = configure(load_settings())

import workers.tasks  # noqa: E402,F401  (registers the tasks)
