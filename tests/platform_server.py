"""Moved to ``rfwatch.testing.platform_server`` (public, for plugin authors too). This alias keeps
``from platform_server import ...`` in the tests working: it is the same module object, not a copy."""

import sys

from rfwatch.testing import platform_server as _module

sys.modules[__name__] = _module
