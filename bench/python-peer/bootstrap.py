"""The peer's entry point, as `python -m awslambdaric <handler>` with the task root on the path:
bench/run writes it into the peer's virtual environment with that interpreter's #! line."""

import os
import sys

sys.path.insert(0, os.environ["LAMBDA_TASK_ROOT"])

from awslambdaric.__main__ import main  # noqa: E402

main([sys.argv[0], os.environ["_HANDLER"]])
