"""Runs cfn-lint as if today were DATE.

    python cfn_lint_on.py YYYY-MM-DD [cfn-lint arguments]

cfn-lint's Lambda runtime rules (E2531, E2533, W2531) compare the runtime's
dates in its LmbdRuntimeLifecycle data with datetime.today(); this runs them
on another day, to see what a deploy on that day would meet. Run it with
the Python that has cfn-lint (.run/validators/bin/python).
"""

import datetime
import sys

day = datetime.date.fromisoformat(sys.argv[1])


class _Clock(datetime.datetime):
    @classmethod
    def today(cls):
        return cls(day.year, day.month, day.day)

    @classmethod
    def now(cls, tz=None):
        return cls(day.year, day.month, day.day, tzinfo=tz)


# Before cfn-lint is imported, so that its `from datetime import datetime`
# takes this one.
datetime.datetime = _Clock

from cfnlint.runner import main  # noqa: E402

sys.argv = ["cfn-lint", *sys.argv[2:]]
sys.exit(main())
